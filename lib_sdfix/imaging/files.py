"""Images as bytes and files: base64 PNG for JSON and data URLs, PNG with the WebUI's infotext, and a
set of images saved together with their labelled grid and metrics JSON, never overwriting a file."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from PIL import Image

from lib_sdfix.imaging.grid import compose_grid

__all__ = ["png_base64", "png_with_infotext", "save_image_set", "SavedItem"]

#: One image of a saved set: (file-safe name, label, image, infotext or None).
SavedItem = Tuple[str, str, Image.Image, Optional[str]]


def png_base64(image: Image.Image) -> str:
    """The image as base64 PNG (for data URLs and the API's JSON)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def png_with_infotext(image: Image.Image, infotext: Optional[str]) -> bytes:
    """PNG bytes with ``infotext`` in the "parameters" chunk, as the WebUI writes it."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if infotext:
        info.add_text("parameters", infotext)  # as the WebUI writes it; Pillow switches to iTXt for non-Latin-1
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_image_set(out_dir: Union[str, Path], basename: str, items: Sequence[SavedItem],
                   document: Mapping[str, Any]) -> Dict[str, Any]:
    """Write each image's PNG (infotext in its "parameters" chunk), the labelled grid and ``document``
    as the metrics JSON.

    Files are ``<basename>-<name>.png``, ``<basename>-grid.png`` (with the first image's infotext) and
    ``<basename>-metrics.json`` in ``out_dir`` (created).  Nothing is overwritten: if any of them
    exists, the whole set moves to ``<basename>-1-...``, ``<basename>-2-...``.  Returns
    {"images": {name: Path}, "grid": Path, "metrics": Path}.
    """
    if not basename or any(sep in basename for sep in ("/", "\\")) or basename in (".", ".."):
        raise ValueError(f"basename must be a plain file name, got {basename!r}")
    if not items:
        raise ValueError("no images to save")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = compose_grid([image for _, _, image, _ in items], [label for _, label, _, _ in items])
    blobs: List[Tuple[str, bytes]] = [(f"-{name}.png", png_with_infotext(image, infotext))
                                      for name, _, image, infotext in items]
    blobs.append(("-grid.png", png_with_infotext(grid, items[0][3])))
    blobs.append(("-metrics.json", json.dumps(dict(document), indent=2, allow_nan=False, ensure_ascii=False).encode("utf-8")))

    for attempt in range(10000):
        stem = basename if attempt == 0 else f"{basename}-{attempt}"
        paths = [out / f"{stem}{suffix}" for suffix, _ in blobs]
        if any(p.exists() for p in paths):
            continue
        written: List[Path] = []
        try:
            for path, (_, data) in zip(paths, blobs):
                with open(path, "xb") as fh:  # exclusive: a file that appeared meanwhile is never replaced
                    written.append(path)
                    fh.write(data)
        except FileExistsError:
            for path in written:
                path.unlink(missing_ok=True)
            continue
        return {
            "images": {name: p for (name, _, _, _), p in zip(items, paths)},
            "grid": paths[len(items)],
            "metrics": paths[len(items) + 1],
        }
    raise FileExistsError(f"no free file name for {basename!r} in {out}")
