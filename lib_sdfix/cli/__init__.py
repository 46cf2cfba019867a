"""The command line, ``python -m lib_sdfix {check, ab, diagnose}`` (and the ``sdfix`` console script):
the diffusers library (:mod:`lib_sdfix.diffusers`) and the diagnosis (:mod:`lib_sdfix.diagnose`) run
on an embedded demo service, with an HTML report.  Nothing here is imported by the library.

``__main__`` (the parser, ``main`` and ``check``, the self-check of the core), ``command`` (what every
command shares: how it fails, argument types and bounds), ``ab_command`` / ``ab_run`` / ``ab_report``
(``ab``: its arguments, the run without and with the fixes, its page), ``diagnose_command`` /
``diagnose_run`` / ``diagnose_report`` (``diagnose``: the same three), ``service`` (the unfixed
txt2img + img2img service the runs load) and ``tiny`` (the embedded random-weight SD1.5 and upscaler).
"""
