"""SDFix inside real WebUIs (AUTOMATIC1111 v1.10.1, Forge, reForge), observed from the inside (see conftest.py)."""
from __future__ import annotations

import pytest
from PIL import Image

from lib_sdfix.settings import UI_ARG_ORDER, SDFixSettings

from .conftest import AUTH, encode_png, skip_slow

GUARDED = {"cuda.matmul.allow_tf32": False, "cudnn.allow_tf32": False, "cudnn.benchmark": False,
           "float32_matmul_precision": "highest"}
LANCZOS, BOX = int(Image.LANCZOS), int(Image.BOX)


def native_vae(webui) -> str:
    return webui.ok("GET", "/sdfix/v1/status")["environment"]["vae_weights_dtype"]


def weights_mode(webui) -> str:
    """What "weights=" must say: "fp32" for an fp32 VAE, "exact" where the VAE's file holds more precision
    than it runs in (a bf16 VAE from the fp16 test checkpoints, an fp16 VAE from an fp32 VAE file),
    "upcast" otherwise."""
    mode = webui.ok("GET", "/sdfix/v1/status")["environment"]["vae_weights"]["mode"]
    if webui.host in ("forge", "reforge"):
        assert mode == "exact"
    return mode


def sampling_passes(records):
    """One record per sampling pass (Forge calls process_before_every_sampling twice in its Hires pass)."""
    passes = []
    for entry in records["sampling"]:
        if passes and {k: v for k, v in entry.items() if k != "sigmas"} == {k: v for k, v in passes[-1].items() if k != "sigmas"}:
            continue
        passes.append(entry)
    return passes


def assert_guarded(record):
    assert record["input_dtype"] == "torch.float32", record
    assert record["weight_dtype"] == "torch.float32", record
    for name, value in GUARDED.items():
        assert record["flags"][name] == value, (name, record)
    assert not any(str(v).startswith("<raised") for v in record["flags"].values()), record


def assert_restored(webui, before):
    after = webui.flags()
    assert after == before, (before, after)
    functions = webui.ok("GET", "/sdfix-observer/functions")
    assert all(state["original"] for state in functions.values()), functions
    assert webui.ok("GET", "/sdfix/v1/status")["environment"]["patched_now"] == []


@pytest.fixture
def flags_before(webui):
    return webui.flags()


def test_txt2img_decode_is_guarded_and_everything_restored(webui, flags_before):
    native = native_vae(webui)
    result = webui.txt2img()
    decodes = result.vae("decoder")
    assert len(decodes) == 1
    assert_guarded(decodes[0])
    text = result.params()["SDFix"]
    assert SDFixSettings.from_infotext(text) == SDFixSettings()
    assert text.endswith(f"weights={weights_mode(webui)}"), text
    assert "SDFix notes" not in result.params()
    assert native_vae(webui) == native  # the VAE is back in its own dtype
    assert_restored(webui, flags_before)


def test_without_sdfix_the_vae_runs_as_the_host_sets_it(webui, flags_before):
    """The observer sees what SDFix fixes: the host's own flags and VAE dtype during decode."""
    native = native_vae(webui)
    result = webui.txt2img([{"enabled": False}])
    record = result.vae("decoder")[0]
    assert record["flags"]["cudnn.allow_tf32"] == flags_before["cudnn.allow_tf32"]
    assert record["weight_dtype"] == native and record["input_dtype"] == native
    assert "SDFix" not in result.params()


def test_positional_and_named_args(webui, flags_before):
    positional = SDFixSettings(precision_guard=False).as_args()
    assert len(positional) == len(UI_ARG_ORDER)
    by_list = webui.txt2img(positional)
    by_dict = webui.txt2img([{"precision_guard": False}])
    for result in (by_list, by_dict):
        record = result.vae("decoder")[0]
        assert record["flags"]["cudnn.allow_tf32"] == flags_before["cudnn.allow_tf32"]  # guard off
        assert SDFixSettings.from_infotext(result.params()["SDFix"]).precision_guard is False
    assert by_list.pixels() == by_dict.pixels()
    assert_restored(webui, flags_before)


@pytest.mark.parametrize("args,field", [
    ([{"precision_guard": "yes"}], "precision_guard"),
    ([{"precison_guard": True}], "precison_guard"),
    ([{"latent_denoise_warning": 2}], "latent_denoise_warning"),
    ([{"resize_filter": "BILINEAR"}], "resize_filter"),
    ([{"guard_previews": True}], "guard_previews"),
    ([True, "no"], "precision_guard"),
])
def test_bad_args_fail_with_422_naming_the_field(webui, args, field, flags_before):
    status, body = webui.call("POST", "/sdapi/v1/txt2img", webui.body(
        prompt="x", steps=1, alwayson_scripts={"sdfix": {"args": args}}))
    assert status == 422, body
    assert field in body["detail"] and "SDFix" in body["detail"]
    assert "Traceback" not in str(body)
    assert_restored(webui, flags_before)


def test_hires_latent_parity_overrides_explicit_sampler_and_says_so(webui, flags_before):
    hires = dict(enable_hr=True, hr_upscaler="Latent", hr_scale=2, denoising_strength=0.6,
                 hr_second_pass_steps=2, sampler_name="DPM++ 2M", scheduler="Exponential",
                 hr_sampler_name="Euler", hr_scheduler="Uniform")
    result = webui.txt2img(**hires)
    passes = sampling_passes(result.records)
    assert [p["is_hr_pass"] for p in passes] == [False, True]
    first, second = passes
    assert second["sampler"] == first["sampler"] == "DPM++ 2M"
    assert second["scheduler_field"] == first["scheduler_field"] == "Exponential"
    params = result.params()
    assert "Hires sampler" not in params and "Hires schedule type" not in params
    assert "Hires sampler Euler -> DPM++ 2M" in params["SDFix notes"]
    assert "Hires schedule Uniform -> Exponential" in params["SDFix notes"]
    decodes = result.vae("decoder")
    assert decodes and all(assert_guarded(r) is None for r in decodes)
    assert_restored(webui, flags_before)

    off = webui.txt2img([{"hires_parity": False}], **hires)
    assert sampling_passes(off.records)[1]["sampler"] == "Euler"
    assert sampling_passes(off.records)[1]["scheduler_field"] == "Uniform"
    assert off.params()["Hires sampler"] == "Euler"


def test_latent_upscaler_with_low_denoising_is_noted_not_changed(webui):
    result = webui.txt2img(enable_hr=True, hr_upscaler="Latent", hr_scale=2, denoising_strength=0.3,
                           hr_second_pass_steps=1)
    assert "bilinear" in result.params()["SDFix notes"]
    assert result.params()["Hires upscaler"] == "Latent"
    assert result.image().size == (128, 128)


def _upscale_resizes(result):
    return [r for r in result.records["resize"] if not r["box"] and r["from"][0] > 64]


@pytest.mark.parametrize("target", [(100, 100), (128, 128)])
def test_hires_resrgan_one_pass_and_guarded_encode(webui, flags_before, target):
    skip_slow(webui, "R-ESRGAN")
    hires = dict(enable_hr=True, hr_upscaler="R-ESRGAN 4x+", hr_resize_x=target[0], hr_resize_y=target[1],
                 denoising_strength=0.4, hr_second_pass_steps=1)
    result = webui.txt2img([{"resize_filter": "BOX"}], **hires)
    resizes = _upscale_resizes(result)
    assert resizes == [dict(resizes[0], **{"from": [256, 256], "to": list(target), "resample": BOX})], resizes
    encodes = result.vae("encoder")
    assert len(encodes) == 1
    assert_guarded(encodes[0])
    assert len(result.vae("decoder")) == 2  # first pass + Hires pass
    for record in result.vae("decoder"):
        assert_guarded(record)
    assert_restored(webui, flags_before)

    if target[0] % 8:
        baseline = webui.txt2img([{"enabled": False}], **hires)
        chain = _upscale_resizes(baseline)
        assert [r["to"] for r in chain] == [[96, 96], list(target)], chain  # the host's double resample


def test_img2img_encode_and_decode_are_guarded_and_plain_resizes_untouched(webui, flags_before):
    init = Image.effect_noise((48, 48), 40).convert("RGB")  # resized to 64x64 without an upscaler
    result = webui.img2img([{"resize_filter": "BOX"}], init_images=[encode_png(init)], denoising_strength=0.5)
    assert len(result.vae("encoder")) == 1 and len(result.vae("decoder")) == 1
    assert_guarded(result.vae("encoder")[0])
    assert_guarded(result.vae("decoder")[0])
    assert "SDFix" in result.params()
    assert all(r["resample"] != BOX for r in result.records["resize"]), result.records["resize"]
    assert_restored(webui, flags_before)


def test_infotext_round_trip_through_png_info_and_infotext_field(webui):
    wanted = SDFixSettings(hires_parity=False, resize_filter="BICUBIC", vae_dtype="auto",
                           latent_denoise_warning=0.25)
    first = webui.txt2img([wanted.as_dict()])
    info = webui.ok("POST", "/sdapi/v1/png-info", {"image": first.payload["images"][0]})
    assert SDFixSettings.from_infotext(info["parameters"]["SDFix"]) == wanted
    if webui.host == "forge":
        return  # Forge's API fails on any "infotext" field (isinstance with list[str]), SDFix or not
    # the API's "infotext" field fills script args from the pasted text, as the paste button does
    second = webui.txt2img(infotext=first.infotext)
    assert SDFixSettings.from_infotext(second.params()["SDFix"]) == wanted


def test_off_is_bit_identical_to_a_host_without_sdfix(webui, flags_before):
    webui.ok("POST", "/sdfix-observer/hide-sdfix", {"hide": True})
    try:
        without = webui.txt2img()
    finally:
        webui.ok("POST", "/sdfix-observer/hide-sdfix", {"hide": False})
    disabled = webui.txt2img([{"enabled": False}])
    all_off = webui.txt2img([{"precision_guard": False, "guard_encode": False, "hires_parity": False,
                              "post_resize": False}])
    assert "SDFix" not in without.params()
    assert disabled.pixels() == without.pixels()
    assert all_off.pixels() == without.pixels()
    assert disabled.records["vae"] == without.records["vae"]
    assert_restored(webui, flags_before)


def test_a_failing_fix_never_breaks_the_generation_nor_the_next_one(webui, flags_before):
    webui.ok("POST", "/sdfix-observer/hide-sdfix", {"hide": True})
    try:
        fresh = webui.txt2img()
    finally:
        webui.ok("POST", "/sdfix-observer/hide-sdfix", {"hide": False})
    native = native_vae(webui)
    webui.ok("POST", "/sdfix-observer/inject-failure", {"target": "decode"})
    try:
        result = webui.txt2img()
        init = Image.effect_noise((64, 64), 40).convert("RGB")
        img2img = webui.img2img(init_images=[encode_png(init)], denoising_strength=0.5)
    finally:
        webui.ok("POST", "/sdfix-observer/inject-failure", {"target": "none"})
    assert result.payload["images"] and img2img.payload["images"]
    assert "not applied: precision_guard (" in result.params()["SDFix notes"]
    assert "not applied:" in img2img.params()["SDFix notes"]
    assert native_vae(webui) == native
    after = webui.txt2img([{"enabled": False}])
    assert after.pixels() == fresh.pixels()  # the VAE is exactly as a fresh host's
    assert_restored(webui, flags_before)


def test_settings_panel_defaults_apply_to_named_args(webui):
    options = webui.ok("GET", "/sdapi/v1/options")  # Forge lists only options that were ever set
    assert options.get("sdfix_hires_parity", True) is True and options.get("sdfix_resize_filter", "LANCZOS") == "LANCZOS"
    assert "sdfix_guard_previews" not in options
    webui.ok("POST", "/sdapi/v1/options", {"sdfix_resize_filter": "BOX"})
    try:
        result = webui.txt2img([{"precision_guard": True}])
    finally:
        webui.ok("POST", "/sdapi/v1/options", {"sdfix_resize_filter": "LANCZOS"})
    assert SDFixSettings.from_infotext(result.params()["SDFix"]).resize_filter == "BOX"


def test_xyz_axes_are_registered(webui):
    axes = webui.ok("GET", "/sdfix-observer/xyz-axes")
    for label in ("SDFix: enabled", "SDFix: precision guard", "SDFix: Hires parity", "SDFix: post-resize"):
        assert label in axes


def test_webuiapi_client_with_named_args(webui):
    webuiapi = pytest.importorskip("webuiapi")
    host, port = webui.url.split("//")[1].split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port))
    if AUTH:
        api.set_auth(*AUTH.split(":", 1))
    result = api.txt2img(prompt="a face", seed=1, steps=2, width=64, height=64, sampler_name="Euler",
                         alwayson_scripts={"sdfix": {"args": [{"hires_parity": False}]}})
    assert "SDFix: on=1 guard=1 encode=1 parity=0" in result.info["infotexts"][0]
