"""``modules.upscaler`` (an upscaler's resize loop, each host's stop rule), ``modules.images``
(``resize_image`` in each host's signature, ``get_next_sequence_number``) and ``modules.paths_internal``."""
from __future__ import annotations

import types
from typing import Any, Callable

from PIL import Image

from .base import Namespace


def install_images(module: Callable[..., types.ModuleType], host: str, shared: Any) -> types.ModuleType:
    """The upscaler and image modules of ``host``, ``shared.sd_upscalers``; returns ``modules.images``."""
    # upscaler + images
    upscaler = module("modules.upscaler")

    class Upscaler:
        scale = 1

        def do_upscale(self, img, selected_model):
            raise NotImplementedError

        def upscale(self, img, scale, selected_model=None):
            self.scale = scale
            dest_w, dest_h = int((img.width * scale) // 8 * 8), int((img.height * scale) // 8 * 8)
            for i in range(3):
                if host == "reforge":
                    if img.width > dest_w and img.height > dest_h and scale != 1:
                        break
                elif img.width >= dest_w and img.height >= dest_h and (i > 0 or scale != 1):
                    break
                shape = img.size
                img = self.do_upscale(img, selected_model)
                if shape == img.size:
                    break
                if host == "reforge" and img.width >= dest_w and img.height >= dest_h:
                    break
            if img.size != (dest_w, dest_h):
                img = img.resize((dest_w, dest_h), resample=Image.LANCZOS)
            return img

    class Nearest4x(Upscaler):
        def do_upscale(self, img, selected_model):
            return img.resize((img.width * 4, img.height * 4), resample=Image.NEAREST)

    upscaler.Upscaler = Upscaler
    shared.sd_upscalers = [Namespace(name="None", scaler=None, data_path=None),
                           Namespace(name="Fake 4x", scaler=Nearest4x(), data_path="fake.pth")]

    images = module("modules.images")

    def resize_image(resize_mode, im, width, height, upscaler_name=None, force_RGBA=False):
        if host != "a1111" and not force_RGBA and im.mode == "RGBA":
            im = im.convert("RGB")
        upscaler_name = upscaler_name or shared.opts.upscaler_for_img2img
        if (upscaler_name not in (None, "None") and im.mode != "L" and not force_RGBA
                and max(width / im.width, height / im.height) > 1):
            data = next(x for x in shared.sd_upscalers if x.name == upscaler_name)
            im = data.scaler.upscale(im, max(width / im.width, height / im.height), data.data_path)
        if im.size != (width, height):
            im = im.resize((width, height), resample=Image.LANCZOS)
        return im

    if host == "a1111":
        def resize_image_a1111(resize_mode, im, width, height, upscaler_name=None):
            return resize_image(resize_mode, im, width, height, upscaler_name)

        images.resize_image = resize_image_a1111
    else:
        images.resize_image = resize_image

    def get_next_sequence_number(path, basename):
        """images.py: one more than the largest leading number of the files in ``path`` (0 for none)."""
        import os

        result = -1
        basename = f"{basename}-" if basename != "" else basename
        for name in os.listdir(path):
            if name.startswith(basename):
                parts = os.path.splitext(name[len(basename):])[0].split("-")
                try:
                    result = max(int(parts[0]), result)
                except ValueError:
                    pass
        return result + 1

    images.get_next_sequence_number = get_next_sequence_number
    module("modules.paths_internal").default_output_dir = "outputs"
    return images
