"""``modules.scripts`` (Script, ScriptBuiltinUI and the ScriptRunner's hooks, errors reported, not raised) and
the scripts in the txt2img runner besides SDFix's: a built-in UI-only one and another extension's."""
from __future__ import annotations

import contextlib
import itertools
from typing import Any, Dict, List

from .base import ROOT


def install_scripts(scripts) -> None:
    """modules/scripts.py: Script, ScriptBuiltinUI and the ScriptRunner's hooks (errors reported, not raised)."""

    class Script:
        filename = None
        args_from = args_to = None
        alwayson = False
        is_txt2img = is_img2img = False
        tabname = None
        setup_for_ui_only = False
        controls = None
        infotext_fields = paste_field_names = None

        def title(self):
            raise NotImplementedError

        def ui(self, is_img2img):
            pass

        def show(self, is_img2img):
            return True

        def elem_id(self, item_id):
            return f"script_sdfix_{item_id}"

        def setup(self, p, *args):
            pass

        def before_process(self, p, *args):
            pass

        def process(self, p, *args):
            pass

        def before_process_batch(self, p, *args, **kwargs):
            pass

        def process_batch(self, p, *args, **kwargs):
            pass

        def process_before_every_sampling(self, p, *args, **kwargs):
            pass

        def post_sample(self, p, ps, *args):
            pass

        def before_hr(self, p, *args):
            pass

        def postprocess_batch(self, p, *args, **kwargs):
            pass

        def postprocess_batch_list(self, p, pp, *args, **kwargs):
            pass

        def postprocess_image(self, p, pp, *args):
            pass

        def postprocess_image_after_composite(self, p, pp, *args):
            pass

        def postprocess(self, p, processed, *args):
            pass

    class ScriptBuiltinUI(Script):
        setup_for_ui_only = True

        def show(self, is_img2img):
            return scripts.AlwaysVisible

    class PostprocessImageArgs:
        def __init__(self, image):
            self.image = image

    class PostSampleArgs:
        def __init__(self, samples):
            self.samples = samples

    class PostprocessBatchListArgs:
        def __init__(self, images):
            self.images = images

    class ScriptRunner:
        def __init__(self):
            self.scripts, self.selectable_scripts, self.alwayson_scripts = [], [], []
            self.inputs = [None]
            self.errors = []  # what errors.report would have printed: (hook, script title, exception)

        def initialize_scripts(self, classes, is_img2img=False):
            for cls in classes:
                script = cls()
                script.filename = getattr(cls, "__module__", cls.__name__)
                script.is_txt2img, script.is_img2img = not is_img2img, is_img2img
                script.tabname = "img2img" if is_img2img else "txt2img"
                visibility = script.show(is_img2img)
                if visibility is scripts.AlwaysVisible:
                    self.scripts.append(script)
                    self.alwayson_scripts.append(script)
                    script.alwayson = True
                elif visibility:
                    self.scripts.append(script)
                    self.selectable_scripts.append(script)

        def create_script_ui(self, script):
            """ui.py builds each script's controls; a ui() that raises is reported and gets no args."""
            script.args_from = script.args_to = len(self.inputs)
            try:
                controls = script.ui(script.is_img2img)
            except Exception as exc:  # noqa: BLE001 -- wrap_call
                self.errors.append(("ui", script.title(), exc))
                controls = None
            script.controls = controls
            if controls is None:
                return
            self.inputs += list(controls)
            script.args_to = len(self.inputs)

        def reload_sources(self):
            """"Reload script bodies": new instances keep their args range; their controls are gone."""
            for i, script in enumerate(list(self.scripts)):
                fresh = type(script)()
                for attr in ("filename", "args_from", "args_to", "alwayson", "is_txt2img", "is_img2img", "tabname"):
                    setattr(fresh, attr, getattr(script, attr))
                self.scripts[i] = fresh
                if script in self.alwayson_scripts:
                    self.alwayson_scripts[self.alwayson_scripts.index(script)] = fresh
                if script in self.selectable_scripts:
                    self.selectable_scripts[self.selectable_scripts.index(script)] = fresh

        def ordered_scripts(self, method_name):
            return [s for s in self.alwayson_scripts
                    if getattr(type(s), method_name, None) is not getattr(Script, method_name, None)]

        def _each(self, method_name, p, *args, **kwargs):
            for script in self.ordered_scripts(method_name):
                try:
                    getattr(script, method_name)(p, *args, *p.script_args[script.args_from:script.args_to], **kwargs)
                except Exception as exc:  # noqa: BLE001 -- errors.report
                    self.errors.append((method_name, script.title(), exc))

        def setup_scrips(self, p, *, is_ui=True):
            for script in self.ordered_scripts("setup"):
                if not is_ui and script.setup_for_ui_only:
                    continue
                try:
                    script.setup(p, *p.script_args[script.args_from:script.args_to])
                except Exception as exc:  # noqa: BLE001
                    self.errors.append(("setup", script.title(), exc))

        def before_process(self, p):
            self._each("before_process", p)

        def process(self, p):
            self._each("process", p)

        def before_process_batch(self, p, **kwargs):
            self._each("before_process_batch", p, **kwargs)

        def process_batch(self, p, **kwargs):
            self._each("process_batch", p, **kwargs)

        def process_before_every_sampling(self, p, **kwargs):
            self._each("process_before_every_sampling", p, **kwargs)

        def post_sample(self, p, ps):
            self._each("post_sample", p, ps)

        def before_hr(self, p):
            self._each("before_hr", p)

        def postprocess_batch(self, p, images, **kwargs):
            for script in self.ordered_scripts("postprocess_batch"):
                try:
                    script.postprocess_batch(p, *p.script_args[script.args_from:script.args_to], images=images, **kwargs)
                except Exception as exc:  # noqa: BLE001
                    self.errors.append(("postprocess_batch", script.title(), exc))

        def postprocess_batch_list(self, p, pp, **kwargs):
            self._each("postprocess_batch_list", p, pp, **kwargs)

        def postprocess_image(self, p, pp):
            self._each("postprocess_image", p, pp)

        def postprocess_image_after_composite(self, p, pp):
            self._each("postprocess_image_after_composite", p, pp)

        def postprocess(self, p, processed):
            self._each("postprocess", p, processed)

    scripts.Script = Script
    scripts.ScriptBuiltinUI = ScriptBuiltinUI
    scripts.AlwaysVisible = object()
    scripts.PostprocessImageArgs = PostprocessImageArgs
    scripts.PostSampleArgs = PostSampleArgs
    scripts.PostprocessBatchListArgs = PostprocessBatchListArgs
    scripts.ScriptRunner = ScriptRunner
    scripts.scripts_data = []
    scripts.scripts_txt2img = None
    scripts.basedir = lambda: str(ROOT)


# --- scripts in the txt2img runner besides SDFix's ----------------------------------------------------


def other_scripts(scripts) -> Dict[str, type]:
    """A built-in UI-only script and another extension's AlwaysOn script, as the runner holds them."""

    class BuiltinSampler(scripts.ScriptBuiltinUI):
        """Like processing_scripts/sampler.py + seed.py: setup copies the UI's controls into p (UI only)."""

        setups: List[Any] = []

        def title(self):
            return "Sampler"

        def ui(self, is_img2img):
            import gradio as gr

            return [gr.Slider(minimum=1, maximum=150, step=1, label="Sampling steps", value=20),
                    gr.Radio(label="Sampling method", choices=["Euler", "Euler a", "DPM++ 2M"], value="Euler a"),
                    gr.Number(label="Seed", value=-1)]

        def setup(self, p, steps, sampler_name, seed):
            type(self).setups.append(p)
            p.steps, p.sampler_name, p.seed = steps, sampler_name, seed

    class Marker(scripts.Script):
        """Another extension: marks the image (postprocess_image) and the infotext (process) when enabled;
        ``nested``: first runs a second generation on this thread and pastes a corner of it (as ADetailer
        runs its inpainting from postprocess_image)."""

        calls: List[Any] = []
        fail_ui = False

        def title(self):
            return "Marker"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def ui(self, is_img2img):
            if type(self).fail_ui:
                raise RuntimeError("marker ui broke")
            import gradio as gr

            return [gr.Checkbox(label="Mark", value=False), gr.Textbox(label="Tag", value="marked"),
                    gr.Checkbox(label="Nested generation", value=False)]

        def process(self, p, enabled, tag, nested):
            if enabled:
                p.extra_generation_params["Marker"] = tag

        def postprocess_image(self, p, pp, enabled, tag, nested):
            type(self).calls.append({"p": p, "enabled": enabled, "tag": tag})
            if not enabled:
                return
            from modules import processing, shared

            image = pp.image.copy()
            if nested:
                inner = processing.StableDiffusionProcessingTxt2Img(
                    sd_model=shared.sd_model, prompt="a face, detailed", seed=p.seeds[0] + 1, steps=2, width=64,
                    height=64, sampler_name="Euler", do_not_save_samples=True, do_not_save_grid=True)
                with contextlib.closing(inner):
                    face = processing.process_images(inner).images[0]
                image.paste(face.crop((0, 0, 16, 16)), (8, 8))
            for xy in itertools.product(range(4), range(4)):
                image.putpixel(xy, (255, 0, 255))
            pp.image = image

    return {"builtin": BuiltinSampler, "marker": Marker}
