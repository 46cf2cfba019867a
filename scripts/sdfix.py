"""SDFix's AlwaysOn script and callback registration; everything else lives in ``lib_sdfix.webui``."""
from __future__ import annotations

from typing import Any, List

import modules.scripts as scripts

from lib_sdfix import __version__
from lib_sdfix.failsafe import logger
from lib_sdfix.settings import INFOTEXT_KEY, REFINE_INFOTEXT_KEY, UI_ARG_ORDER
from lib_sdfix.webui import apply, callbacks
from lib_sdfix.webui.controls import build_script_controls, infotext_paste_value
from lib_sdfix.webui.diagnose import last_output, nan_watch


class SDFixScript(scripts.Script):
    """SDFix accordion in txt2img and img2img; applies the fixes to each generation."""

    sorting_priority = 20

    def title(self) -> str:
        return "SDFix"

    def show(self, is_img2img: bool) -> Any:
        return False if apply.disabled_by_flag() else scripts.AlwaysVisible

    def ui(self, is_img2img: bool) -> List[Any]:
        controls = build_script_controls(apply.settings_defaults(), self.elem_id)
        self.infotext_fields = [
            (control, lambda params, name=name: infotext_paste_value(params, name))
            for control, name in zip(controls, UI_ARG_ORDER)
        ]
        self.paste_field_names = [INFOTEXT_KEY, REFINE_INFOTEXT_KEY]
        return controls

    def setup(self, p: Any, *args: Any) -> None:
        apply.setup(p, args)

    def process(self, p: Any, *args: Any) -> None:
        nan_watch.attach(apply.process(p, args))

    def process_before_every_sampling(self, p: Any, *args: Any, **kwargs: Any) -> None:
        nan_watch.before_sampling(p)

    def postprocess_batch(self, p: Any, *args: Any, **kwargs: Any) -> None:
        nan_watch.after_decode(p)

    def postprocess(self, p: Any, processed: Any, *args: Any) -> None:
        last_output.remember(processed)
        apply.postprocess(p)


if not apply.disabled_by_flag():
    callbacks.register()
    logger.debug("SDFix %s loaded", __version__)
