"""The A/B report page: well-formed, self-contained, escaped, and every image it shows exists."""
import json
import math
from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageFilter

from lib_sdfix.cli.ab_report import JSON_NAME, REPORT_NAME, write_report

from ..html_check import parse_strictly


def _noise(seed, size=(64, 64)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _arm(name, image, fixes=(), hires=True):
    return SimpleNamespace(
        name=name, fixes=fixes, image=image, first_pass=image.resize((32, 32)) if hires else None,
        resized=image if hires else None, timings={"txt2img": 0.5, "upscale": 0.1, "resize": 0.01, "img2img": 0.7, "total": 1.31},
        resize={"filter": "LANCZOS", "from": [128, 128], "to": [64, 64], "passes": 1} if hires else None,
        notes=["prompt embeddings cast float32 -> bfloat16"], failed={}, audit={},
    )


def _finding(present, detail):
    return {"title": "a cause", "present": present, "status": {True: "present", False: "absent", None: "not observed"}[present],
            "detail": detail}


def test_report_is_well_formed_escaped_and_complete(tmp_path):
    base = _noise(0)
    result = SimpleNamespace(
        config={"seed": 7, "prompt": "<script>alert('x')</script> & \"quotes\""},
        environment={"model": "tiny <b>model</b>", "device": "cpu", "dtype": "bfloat16"},
        notes=["note one"],
        arms={"without": _arm("without", base), "with": _arm("with", base.filter(ImageFilter.SHARPEN), ("vae_precision",)),
              "only offload_hooks": _arm("only offload_hooks", base.copy(), ("offload_hooks",))},
        audit_before={"vae_precision": _finding(True, "VAE in <bf16>"), "hires_resize": _finding(None, "not seen")},
        audit_after={"vae_precision": _finding(False, "guarded"), "hires_resize": _finding(False, "LANCZOS")},
    )
    page_path = write_report(tmp_path, result)
    assert page_path == tmp_path / REPORT_NAME
    text = page_path.read_text(encoding="utf-8")
    page = parse_strictly(text)

    assert len(page.scripts) == 1 and "alert" not in page.scripts[0], "the prompt is text, never script"
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text and "tiny &lt;b&gt;model&lt;/b&gt;" in text
    sources = [attrs["src"] for tag, attrs in page.elements if tag == "img"]
    assert sources and all((tmp_path / src).is_file() for src in sources)
    assert all("/" not in src and not src.startswith("data:") for src in sources), "relative files beside the page"
    for src in set(sources):
        Image.open(tmp_path / src).verify()
    slider = [attrs for tag, attrs in page.elements if tag == "input" and attrs.get("type") == "range"]
    assert slider and slider[0]["id"] == "split" and "getElementById('split')" in page.scripts[0]
    assert {"without.png", "with.png", "heatmap.png"} <= set(sources)
    assert not any(tag == "link" or (tag == "script" and "src" in attrs) for tag, attrs in page.elements), "self-contained"

    data = json.loads((tmp_path / JSON_NAME).read_text())
    rows = {row["name"]: row for row in data["metrics"]["variants"]}
    assert rows["without"]["reference"] is True and rows["without"]["psnr"] == "inf"
    assert rows["only offload_hooks"]["psnr"] == "inf", "identical to the unfixed image"
    assert rows["with"]["laplacian_ratio"] > 1.0 and rows["with"]["psnr"] < 60
    assert data["audit"]["without"]["vae_precision"]["present"] is True
    assert data["arms"]["with"]["files"]["image"] == "with.png"
    assert math.isclose(data["arms"]["with"]["timings_s"]["total"], 1.31)
    heatmap = np.asarray(Image.open(tmp_path / "heatmap.png"))
    assert heatmap.shape == (64, 64, 3) and heatmap.max() > 0
