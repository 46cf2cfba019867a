"""The diagnose body: every field bounded and named when refused; defaults; the plan's cells and sharing."""
import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from lib_sdfix.diagnose import plan
from lib_sdfix.diagnose import request as R
from lib_sdfix.settings import SDFixSettings, SettingsError

BASE = SDFixSettings()
PAYLOAD = {"prompt": "a portrait", "seed": 5, "steps": 20, "cfg_scale": 7}
NAMES = {"sampler_name": ["Euler", "Euler a", "DPM++ 2M"], "scheduler": ["Automatic", "Karras", "karras"]}


def body(**fields):
    return R.diagnose_request_from_body(fields, BASE, names=NAMES, supported_variants=("webui", "precision_guard", "fp32", "bf16"))


def problems(**fields):
    with pytest.raises(SettingsError) as err:
        body(**fields)
    return err.value.problems


def png(width, height):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_kind_is_required_and_unknown_fields_are_named():
    assert "kind" in problems(payload=PAYLOAD)
    assert "kind" in problems(kind="sweeep")
    found = problems(kind="sweep", payload=PAYLOAD, axis="steps", valeus=[1, 2], image="x")
    assert "valeus" in found and "image" in found
    with pytest.raises(SettingsError, match="body"):
        R.diagnose_request_from_body(["sweep"], BASE)


def test_sweep_defaults_are_seed_001s_and_the_reference_is_the_users_setting():
    cfg = body(kind="sweep", payload=PAYLOAD, axis="cfg_scale")
    assert cfg.values == (1.0, 3.0, 5.0, 7.0, 10.0, 15.0) and cfg.reference == 7.0
    assert [c.label for c in cfg.cells][:2] == ["CFG 1", "CFG 3"] and cfg.reference_cell.name == "cfg-7"
    steps = body(kind="sweep", payload={"prompt": "x", "steps": 30}, axis="steps")
    assert steps.values == (10, 20, 50, 100) and steps.reference == 100  # the most converged
    samplers = body(kind="sweep", payload=PAYLOAD, axis="sampler_name")
    assert samplers.values == ("Euler", "Euler a", "DPM++ 2M")  # the defaults the host knows
    precision = body(kind="sweep", payload=PAYLOAD, axis="precision")
    assert precision.values == (False, True) and precision.reference is True


def test_sweep_values_are_bounded_typed_unique_and_known():
    found = problems(kind="sweep", payload=PAYLOAD, axis="cfg_scale", values=[1, "7", 31, 1.0, True])
    assert set(found) == {"values[1]", "values[2]", "values[3]", "values[4]"}
    assert "duplicate" in found["values[3]"]
    assert "values" in problems(kind="sweep", payload=PAYLOAD, axis="steps", values=list(range(1, 14)))  # > 12
    assert "values" in problems(kind="sweep", payload=PAYLOAD, axis="steps", values=[20])  # < 2
    assert "values[1]" in problems(kind="sweep", payload=PAYLOAD, axis="steps", values=[10, 151])
    assert "values[0]" in problems(kind="sweep", payload=PAYLOAD, axis="sampler_name", values=["Eular", "Euler"])
    assert "values[1]" in problems(kind="sweep", payload=PAYLOAD, axis="precision", values=["on", "maybe"])
    assert "axis" in problems(kind="sweep", payload=PAYLOAD, axis="seed")


def test_reference_must_be_one_of_the_values():
    ok = body(kind="sweep", payload=PAYLOAD, axis="steps", values=[10, 20], reference=20)
    assert ok.reference == 20 and ok.reference_cell.label == "20 steps"
    assert "reference" in problems(kind="sweep", payload=PAYLOAD, axis="steps", values=[10, 20], reference=30)
    assert "reference" in problems(kind="sweep", payload=PAYLOAD, axis="precision", reference="perhaps")


def test_payload_is_checked_as_for_ab():
    found = problems(kind="sweep", payload={"prompt": "x", "width": 100, "stpes": 3}, axis="steps")
    assert "payload.width" in found and "payload.stpes" in found
    assert "payload" in problems(kind="steps")
    assert "payload.batch_size" in problems(kind="steps", payload={"prompt": "x", "batch_size": 2})


def test_steps_at_must_lie_within_the_generation():
    ok = body(kind="steps", payload=PAYLOAD, at=[20, 1, 5])
    assert ok.at == (1, 5, 20) and ok.steps == 20
    assert body(kind="steps", payload={"prompt": "x"}).at == ()  # chosen later from the steps
    assert "at[0]" in problems(kind="steps", payload=PAYLOAD, at=[21])
    assert "at[1]" in problems(kind="steps", payload=PAYLOAD, at=[3, 3])
    assert "at" in problems(kind="steps", payload=PAYLOAD, at=list(range(1, 18)))
    assert "at[0]" in problems(kind="steps", payload={"prompt": "x"}, at=[51])  # the API's default is 50 steps
    assert R.default_strip_steps(20) == (3, 7, 10, 13, 17, 20) and R.default_strip_steps(3) == (1, 2, 3)


def test_roundtrip_image_goes_through_decode_image_field_and_the_size_limits():
    ok = body(kind="vae_roundtrip", image=png(100, 72), dtypes=["fp32", "webui"])
    assert ok.image.size == (100, 72) and ok.variants == ("webui", "fp32")  # always in the same order
    assert body(kind="vae_roundtrip", image=png(64, 64)).variants == ("webui", "precision_guard", "fp32", "bf16")
    assert "image" in problems(kind="vae_roundtrip")
    assert "image" in problems(kind="vae_roundtrip", image=png(32, 64))
    assert "image" in problems(kind="vae_roundtrip", image="http://example.com/a.png")
    found = problems(kind="vae_roundtrip", image=png(64, 64), dtypes=["fp8", "fp16", "fp32", "fp32"])
    assert "must be one of" in found["dtypes[0]"] and "not supported on this device" in found["dtypes[1]"]
    assert "duplicate" in found["dtypes[3]"]


def test_a_tiny_png_claiming_a_huge_image_is_refused_before_decoding():
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    found = problems(kind="vae_roundtrip", image=base64.b64encode(bomb).decode())
    assert "claims" in found["image"] and "pixels" in found["image"]


def test_common_fields_are_checked_for_every_kind():
    found = problems(kind="vae_roundtrip", image=png(64, 64), heatmap_gain=0, save="yes")
    assert set(found) == {"heatmap_gain", "save"}


def test_value_lists_from_text_fields():
    assert R.parse_value_list("1, 3,7.5 ,") == [1, 3, 7.5]
    assert R.parse_value_list("Euler a; DPM++ 2M") == ["Euler a", "DPM++ 2M"]
    assert R.parse_value_list("on,off") == ["on", "off"]


# --- the plan ------------------------------------------------------------------------------------------


def test_cells_change_one_field_or_only_sdfix_precision():
    cells = plan.sweep_cells("cfg_scale", [1.0, 7.5], BASE)
    assert [(c.name, c.label, c.fields) for c in cells] == [("cfg-1", "CFG 1", (("cfg_scale", 1.0),)),
                                                            ("cfg-7-5", "CFG 7.5", (("cfg_scale", 7.5),))]
    assert all(c.settings == BASE for c in cells)
    off, on = plan.sweep_cells("precision", [False, True], BASE.changed(enabled=False, resize_filter="BOX"))
    assert off.fields == on.fields == ()
    assert (off.settings.enabled, off.settings.precision_guard, off.settings.guard_encode) == (True, False, False)
    assert (on.settings.precision_guard, on.settings.guard_encode, on.settings.resize_filter) == (True, True, "BOX")
    alike = plan.sweep_cells("sampler_name", ["DPM++ 2M", "DPM 2M"], BASE)
    assert [c.name for c in alike] == ["sampler-dpm-2m", "sampler-dpm-2m-2"]


def test_cells_that_differ_only_in_the_decode_share_one_sampling():
    precision = plan.sweep_cells("precision", [False, True], BASE)
    assert plan.count_samplings(precision) == 1 and plan.count_decodes(precision) == 2
    groups = plan.payload_groups(precision, hires=False, latent_upscaler=True)
    assert len(groups) == 1 and len(groups[0][1]) == 1 and len(groups[0][1][0].decodes) == 2
    cfg = plan.sweep_cells("cfg_scale", [1.0, 3.0, 5.0], BASE)
    assert plan.count_samplings(cfg) == 3 and plan.count_decodes(cfg) == 3
    # with Hires and an upscaler model, the guarded decode and encode shape the Hires input: two Hires passes
    assert plan.count_samplings(precision, hires=True, latent_upscaler=False) == 3
    assert plan.count_samplings(precision, hires=True, latent_upscaler=True) == 2


@pytest.mark.parametrize("bf16_kernels", [False, True])
def test_without_dtypes_a_cpu_runs_no_slow_half_dtype_but_one_asked_for_by_name_runs(monkeypatch, bf16_kernels):
    from lib_sdfix.diagnose import roundtrip
    from lib_sdfix.diagnose.roundtrip import default_variants, supported_variants

    monkeypatch.setattr(roundtrip, "_fast_on_cpu", lambda dtype: dtype == "bf16" and bf16_kernels)
    assert {"fp16", "bf16"} <= set(supported_variants("cpu")) and "fp16" not in default_variants("cpu")
    cpu = dict(supported_variants=supported_variants("cpu"), default_variants=default_variants("cpu"))
    default = R.diagnose_request_from_body({"kind": "vae_roundtrip", "image": png(64, 64)}, SDFixSettings(), **cpu)
    assert default.variants == ("webui", "precision_guard", "fp32") + (("bf16",) if bf16_kernels else ())
    named = R.diagnose_request_from_body({"kind": "vae_roundtrip", "image": png(64, 64), "dtypes": ["fp16", "bf16"]},
                                         SDFixSettings(), **cpu)
    assert named.variants == ("fp16", "bf16")
