// Run buttons of SDFix's Diagnose section: register the job id so the WebUI's own progress bar (and its
// Interrupt) follow the diagnosis, as the txt2img tab's submit() does.
function sdfixDiagnoseSubmit() {
    var id = randomId();
    requestProgress(id, gradioApp().getElementById("sdfix_dg_results"), gradioApp().getElementById("sdfix_dg_gallery"), function () {});
    var args = create_submit_args(arguments);
    args[0] = id;
    return args;
}
