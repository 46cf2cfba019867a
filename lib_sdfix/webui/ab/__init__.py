"""The A/B comparison inside the host (the plan, metrics and output are lib_sdfix.ab's, host-free).

``request`` (the body with this host's names, the payload checked by its txt2img API model, the script
args), ``sampling`` (the hold on the host's samplers that records and injects latents), ``runner``
(every variant a real generation, sampled once per group; the JSON answer) and ``tab`` (the A/B
section of SDFix's tab).
"""
