"""SDFix inside a WebUI (AUTOMATIC1111 v1.10, Forge, reForge): the only package that imports the host.

``scripts/sdfix.py`` defines the AlwaysOn script and calls :func:`callbacks.register`; everything else
is here, one home per concern:

- ``hosts/``: the one interface to the host (``base.Host``), its implementations and which one runs;
- ``patches``: the one place host functions are replaced and put back (hold / release);
- ``session`` (per-generation state, bound to its thread), ``hooks`` (the replaced host functions and
  which a generation's fixes need), ``refine`` (the late refine on the samplers the host creates),
  ``apply`` (settings to session to infotext: what the AlwaysOn script does);
- ``ab/`` (the A/B runner and its tab), ``diagnose/`` (the diagnosis runner, the NaN watch, the last
  output and its tab), ``form`` (the generation form both tabs share), ``tabs`` (SDFix's tab);
- ``routes`` (the HTTP API), ``controls`` (the accordion), ``panel`` (the Settings section), ``xyz``
  (the X/Y/Z plot axes), ``callbacks`` (registering all of it with the WebUI, and unloading).

Modules import one another at module level, in one direction (tests/test_packaging.py checks for
cycles).  Function-level imports are of the host (``modules.*`` and its forks' packages), of heavy or
optional libraries (torch, gradio, fastapi, pydantic), of core modules only a run needs, and two
deferrals for start-up time: tabs.py's sections (when the host builds its UI) and routes.py's runners
(where the host serves its API).
"""
