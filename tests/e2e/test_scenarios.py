"""Paths that broke SDFix before: X/Y/Z cells that raise and Hires sampler axes, SD upscale, other
extensions' scripts in A/B, exact fp32 weights against an fp32 host, an fp16 VAE that gives NaN, and
the routes of a WebUI started without --api."""
from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from .conftest import REFERENCE_URLS, WebUI, call, encode_png, skip_slow
from .test_webui import BOX, assert_guarded, assert_restored, sampling_passes

MARK = (255, 0, 255)


def _xyz_args(webui: WebUI, x_label: str, x_values: str, lone_images: bool = False):
    """The X/Y/Z script's args: axes with choices read the dropdown list, the others the text.
    ``lone_images``: "Include Sub Images" (reForge answers only the grid's infotext without it)."""
    axes = webui.ok("GET", "/sdfix-observer/xyz-axes")
    x_type = axes.index(x_label)
    dropdown = [v.strip() for v in x_values.split(",")]
    if webui.host == "reforge":  # draw_individual_labels, skip_grid, items_per_grid after draw_legend
        return [x_type, x_values, dropdown, 0, "", [], 0, "", [], True, False, False, 0, lone_images, False,
                False, False, False, False, 0, False]
    return [x_type, x_values, dropdown, 0, "", [], 0, "", [], True, lone_images, False, False, False, False, False, 0,
            False]


def test_a_failing_xyz_cell_leaves_no_patch_and_no_fix_behind(webui):
    """The plot swallows a cell's exception and never closes the cell: nothing of it may survive the job."""
    before = webui.flags()
    webui.ok("POST", "/sdfix-observer/inject-failure", {"target": "seed:13013"})
    try:
        status, answer = webui.call("POST", "/sdapi/v1/txt2img", webui.body(
            seed=13013, script_name="x/y/z plot", script_args=_xyz_args(webui, "Seed", "13013, 13014"),
            alwayson_scripts={"sdfix": {"args": [{"resize_filter": "BOX"}]}}))
    finally:
        webui.ok("POST", "/sdfix-observer/inject-failure", {"target": "none"})
    assert status == 200, answer
    assert_restored(webui, before)
    webui.ok("POST", "/sdfix-observer/reset")
    image = encode_png(Image.effect_noise((32, 32), 30).convert("RGB"))
    status, extras = webui.call("POST", "/sdapi/v1/extra-single-image", {
        "image": image, "upscaling_resize": 1.5, "upscaler_1": "Lanczos"})
    assert status == 200, extras
    resizes = webui.ok("GET", "/sdfix-observer/records")["resize"]
    assert resizes and all(r["resample"] != BOX for r in resizes), resizes


def test_parity_steps_aside_for_an_xyz_hires_sampler_axis(webui):
    webui.ok("POST", "/sdfix-observer/reset")
    answer = webui.ok("POST", "/sdapi/v1/txt2img", webui.body(
        enable_hr=True, hr_upscaler="Latent", hr_scale=2, denoising_strength=0.6, hr_second_pass_steps=1,
        sampler_name="DPM++ 2M", script_name="x/y/z plot",
        script_args=_xyz_args(webui, "Hires sampler", "Euler a, DPM++ 2M")))
    passes = sampling_passes(webui.ok("GET", "/sdfix-observer/records"))
    hires = [p["sampler"] for p in passes if p["is_hr_pass"]]
    assert hires == ["Euler a", "DPM++ 2M"], passes
    import json

    infotexts = json.loads(answer["info"])["infotexts"]
    assert any("Hires sampler Euler a set by the X/Y/Z plot, kept" in text for text in infotexts), infotexts


def test_sd_upscale_resizes_once_with_the_chosen_filter(webui):
    skip_slow(webui, "R-ESRGAN")
    before = webui.flags()
    upscalers = [u["name"] for u in webui.ok("GET", "/sdapi/v1/upscalers")]
    init = encode_png(Image.effect_noise((64, 64), 40).convert("RGB"))
    result = webui.img2img([{"resize_filter": "BOX"}], init_images=[init], denoising_strength=0.3, steps=1,
                           script_name="sd upscale", script_args=[None, 0, upscalers.index("R-ESRGAN 4x+"), 1.5])
    upscales = [r for r in result.records["resize"] if r["from"] == [256, 256]]
    assert upscales and upscales[0]["to"] == [96, 96] and upscales[0]["resample"] == BOX, result.records["resize"]
    assert_restored(webui, before)


def _pixels(b64: str) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB").tobytes()


def test_ab_runs_other_extensions_scripts_in_every_variant(webui):
    """Another extension's AlwaysOn script (the observer marks images) runs in A and in B, and each
    variant is pixel-equal to a plain generation with the same settings."""
    payload = dict(webui.body(seed=4321), alwayson_scripts={"SDFix observer": {"args": [True]}})
    for key in ("send_images", "save_images"):
        payload.pop(key)
    result = webui.ok("POST", "/sdfix/v1/ab", {"payload": payload, "variants": "ab"})
    for name, settings in (("A", {"enabled": False}), ("B", {"enabled": True})):
        image = Image.open(io.BytesIO(base64.b64decode(result["images"][name]))).convert("RGB")
        assert image.getpixel((0, 0)) == MARK, name
        plain = webui.txt2img([settings], seed=4321, alwayson_scripts={"SDFix observer": {"args": [True]}})
        assert _pixels(result["images"][name]) == plain.pixels(), name
    assert result["scripts"]["note"] is None


def test_exact_fp32_weights_match_an_fp32_host():
    """Forge with a bf16 VAE, SDFix on: bit-identical to the same Forge started with --vae-in-fp32."""
    from .conftest import URLS, _client

    if not URLS["forge"] or not REFERENCE_URLS["forge_fp32"]:
        pytest.skip("set SDFIX_E2E_URL_FORGE (--vae-in-bf16) and SDFIX_E2E_URL_FORGE_FP32 (--vae-in-fp32)")
    forge = _client("forge")
    body = forge.body(seed=99)
    status, reference = call(REFERENCE_URLS["forge_fp32"], "POST", "/sdapi/v1/txt2img",
                             dict(body, alwayson_scripts={"sdfix": {"args": [{"enabled": False}]}}))
    assert status == 200, reference
    exact = forge.txt2img(**{k: v for k, v in body.items()})
    assert exact.params()["SDFix"].endswith("weights=exact")
    assert exact.pixels() == _pixels(reference["images"][0])
    upcast_only = forge.txt2img([{"enabled": False}], seed=99)
    assert upcast_only.pixels() != exact.pixels()  # the bf16 VAE really differs


def test_exact_fp32_weights_from_an_fp32_vae_file_on_a_half_precision_host():
    """AUTOMATIC1111 --precision half with an fp32 VAE file (--vae-path): SDFix's decode equals the decode
    of that VAE loaded in fp32, bit for bit; the in-place upcast keeps the fp16 rounding."""
    url = REFERENCE_URLS["halfvae"]
    if not url:
        pytest.skip("set SDFIX_E2E_URL_HALFVAE: AUTOMATIC1111 --precision half --vae-path <fp32 VAE file> "
                    "(tests/e2e/make_fp32_vae.py writes one)")
    client = WebUI("fp16", url)
    environment = client.ok("GET", "/sdfix/v1/status")["environment"]
    assert environment["vae_weights_dtype"] == "torch.float16" and environment["vae_weights"]["mode"] == "exact"
    exact = client.txt2img(seed=77)
    upcast = client.txt2img([{"enabled": False}], seed=77)
    assert exact.params()["SDFix"].endswith("weights=exact")
    assert client.ok("POST", "/sdfix-observer/vae-dtype", {"dtype": "fp32"})["weights"] == "torch.float32"
    try:
        reference = client.txt2img([{"enabled": False}], seed=77)  # same fp16 UNet, same latent, fp32 VAE
    finally:
        client.ok("POST", "/sdfix-observer/vae-dtype", {"dtype": "fp16"})
    assert reference.vae("decoder")[0]["weight_dtype"] == "torch.float32"
    assert exact.pixels() == reference.pixels()
    assert upcast.pixels() != exact.pixels()  # the fp16 VAE really differs


def test_fp16_vae_nan_is_avoided_by_the_guard(webui):
    """An fp16 VAE that overflows (SDXL at high resolution): the guarded decode runs fp32 and gives an
    image without the host's NaN fallback; without SDFix the host's own fallback still works."""
    if webui.ok("GET", "/sdfix/v1/status")["environment"]["vae_weights_dtype"] != "torch.float16":
        pytest.skip("needs a host whose VAE runs in fp16")
    webui.ok("POST", "/sdfix-observer/inject-failure", {"target": "nan-half-vae"})
    try:
        result = webui.txt2img()
        assert_guarded(result.vae("decoder")[0])
        assert "SDFix notes" not in result.params()
        assert webui.ok("GET", "/sdfix/v1/status")["environment"]["vae_weights_dtype"] == "torch.float16"
    finally:
        webui.ok("POST", "/sdfix-observer/inject-failure", {"target": "none"})


def test_routes_only_with_the_api():
    url = REFERENCE_URLS["noapi"]
    if not url:
        pytest.skip("set SDFIX_E2E_URL_NOAPI to a WebUI started without --api")
    status, _ = call(url, "GET", "/sdfix/v1/status")
    assert status == 404
    for route in ("/sdfix/v1/ab", "/sdfix/v1/diagnose"):
        status, _ = call(url, "POST", route, {"payload": {}})
        assert status in (404, 405), route
    status, config = call(url, "GET", "/config")
    assert status == 200 and "sdfix_ab_run" in str(config) and "sdfix_dg_run_sweep" in str(config)  # the tab stays


@pytest.mark.parametrize("typed, cells, left_out", [
    ("0.2-0.6 (+0.2)", ["0.2", "0.4", "0.6"], "0.8"),  # the WebUI expands it to 0.2, 0.4, 0.6, 0.8
    ("0.55-0.75 (+0.1)", ["0.55", "0.65", "0.75"], None),  # ends at 0.7500000000000002
])
def test_xyz_strength_axis_takes_the_webuis_own_range_syntax(webui, typed, cells, left_out):
    """docs/refine.md's example through the host's real X/Y/Z range parser: the plot runs, in range."""
    answer = webui.ok("POST", "/sdapi/v1/txt2img", webui.body(
        steps=4, script_name="x/y/z plot",
        script_args=_xyz_args(webui, "SDFix: late refine strength", typed, lone_images=True)))
    import json

    infotexts = json.loads(answer["info"])["infotexts"]
    cell_texts = [text for text in infotexts if "SDFix refine: " in text][-len(cells):]  # after the grid's
    strengths = [next(part.split(": ", 1)[1] for part in text.split(", ") if part.startswith("SDFix refine: "))
                 for text in cell_texts]
    assert strengths == cells, infotexts
    for text in cell_texts:
        if left_out is None:
            assert "left out" not in text
        else:
            assert f"X/Y/Z late_refine_strength {left_out} left out (outside 0.05-0.75)" in text
