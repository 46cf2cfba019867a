"""lib_sdfix.ab: variants, work sharing, effect notes, metrics, grid/HTML/files, infotext and the API body."""
import json
import math
import random
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lib_sdfix.ab import (
    MAX_VARIANTS,
    ABRequest,
    DecodeConfig,
    RunContext,
    Variant,
    ab_request_from_body,
    compare_html,
    compose_grid,
    count_decodes,
    count_runs,
    effect_notes,
    heatmap,
    metrics_display,
    metrics_json,
    metrics_table,
    parse_variants,
    payload_from_infotext,
    plan_variants,
    png_base64,
    resolve_seed,
    sampling_groups,
    save_comparison,
    settings_from_infotext,
)
from lib_sdfix.metrics import compare_detail, difference_heatmap
from lib_sdfix.settings import SDFixSettings, SettingsError

TOGGLES = ("precision_guard", "guard_encode", "hires_parity", "post_resize")


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    return Image.fromarray(data.astronaut()).crop((160, 40, 288, 168))  # 128x128: face and hair


def _on(settings):
    return tuple(name for name in TOGGLES if settings.enabled and getattr(settings, name))


# --- variants ------------------------------------------------------------------------------------


def test_ab_plan_is_sdfix_off_then_the_users_settings_on():
    base = SDFixSettings(enabled=False, hires_parity=False, resize_filter="BICUBIC", vae_dtype="auto")
    a, b = plan_variants("ab", base)
    assert (a.name, b.name) == ("A", "B")
    assert a.settings.enabled is False and _on(a.settings) == ()
    assert b.settings == base.changed(enabled=True)
    assert _on(b.settings) == ("precision_guard", "guard_encode", "post_resize")


def test_ablation_plan_is_baseline_each_fix_alone_and_all():
    base = SDFixSettings(resize_filter="BOX", post_resize=False)
    variants = plan_variants("ablation", base)
    assert [v.name for v in variants] == ["baseline", "precision_guard", "guard_encode", "hires_parity", "post_resize", "all"]
    assert [_on(v.settings) for v in variants] == [
        (), ("precision_guard",), ("guard_encode",), ("hires_parity",), ("post_resize",), TOGGLES]
    assert all(v.settings.resize_filter == "BOX" for v in variants)
    assert len({v.label for v in variants}) == 6 and variants[1].label == "precision guard only"


def test_unknown_mode_is_rejected():
    with pytest.raises(SettingsError) as err:
        plan_variants("abc", SDFixSettings())
    assert "variants" in err.value.problems


def test_parse_variants_accepts_modes_and_explicit_lists():
    base = SDFixSettings(vae_dtype="auto")
    assert parse_variants("ab", base) == plan_variants("ab", base)
    assert parse_variants(["ablation"], base) == plan_variants("ablation", base)
    variants = parse_variants([
        {"name": "off", "settings": {"enabled": False}},
        {"name": "guard-fp32", "label": "guard, fp32", "settings": {"vae_dtype": "fp32", "guard_encode": False}},
        {"name": "defaults"},
    ], base)
    assert [v.name for v in variants] == ["off", "guard-fp32", "defaults"]
    assert variants[0].label == "off" and variants[1].label == "guard, fp32"
    assert variants[1].settings == base.changed(vae_dtype="fp32", guard_encode=False)
    assert variants[2].settings == base


def _spec(name, **settings):
    return {"name": name, "settings": settings}


@pytest.mark.parametrize("value,field,text", [
    ([], "variants", "empty"),
    ([_spec(f"v{i}") for i in range(MAX_VARIANTS + 1)], "variants", "at most 8"),
    ([_spec("a", precision_guard="yes")], "variants[0].settings.precision_guard", "expected true or false"),
    ([_spec("a"), _spec("b", precison_guard=True)], "variants[1].settings.precison_guard", "unknown option"),
    ([_spec("a"), _spec("b", resize_filter="BILINEAR")], "variants[1].settings.resize_filter", "must be one of"),
    ([_spec("a"), _spec("A")], "variants[1].name", "duplicate"),
    ([{"name": 3}], "variants[0].name", "got 3"),
    ([{"name": "../x"}], "variants[0].name", "letters, digits"),
    ([{"settings": {}}], "variants[0].name", "got None"),
    ([{"name": "a", "colour": 1}], "variants[0].colour", "unknown field"),
    ([{"name": "a", "settings": [True]}], "variants[0].settings", "expected an object"),
    ([{"name": "a", "label": ""}], "variants[0].label", "non-empty"),
    (["ab", _spec("x")], "variants[0]", "expected an object"),
    (["nope"], "variants[0]", "unknown mode"),
    ("abc", "variants", "unknown mode"),
    (3, "variants", "got int"),
    ({"name": "a"}, "variants", "got dict"),
])
def test_bad_variant_lists_name_the_field(value, field, text):
    with pytest.raises(SettingsError) as err:
        parse_variants(value, SDFixSettings())
    assert field in err.value.problems, err.value.problems
    assert text in err.value.problems[field]


def test_every_bad_variant_is_reported_at_once():
    with pytest.raises(SettingsError) as err:
        parse_variants([_spec("a", enabled=1), {"name": "a"}, _spec("c", vae_dtype="fp8")], SDFixSettings())
    assert set(err.value.fields) == {"variants[0].settings.enabled", "variants[1].name", "variants[2].settings.vae_dtype"}


# --- work sharing ----------------------------------------------------------------------------


def test_ab_without_hires_is_one_sampling_and_two_decodes():
    variants = plan_variants("ab", SDFixSettings())
    groups = sampling_groups(variants, hires=False, latent_upscaler=False)
    assert len(groups) == 1 and groups[0].key == () and groups[0].variants == tuple(variants)
    assert count_runs(groups) == 1 and count_decodes(groups) == 2
    plain, guarded = groups[0].decodes
    assert plain == DecodeConfig(False) and guarded == DecodeConfig(True, "fp32")
    assert groups[0].variants_for(plain) == (variants[0],) and groups[0].variants_for(guarded) == (variants[1],)


def test_ablation_without_hires_shares_one_sampling_and_decodes_per_decode_config():
    variants = plan_variants("ablation", SDFixSettings())
    variants.append(Variant("auto", "guard in auto dtype", SDFixSettings(vae_dtype="auto")))
    variants.append(Variant("off-auto", "off, auto", SDFixSettings(enabled=False, vae_dtype="auto")))
    (group,) = sampling_groups(variants, hires=False, latent_upscaler=False)
    assert count_runs([group]) == 1
    # unguarded (baseline, encode, parity, resize, off-auto), guarded fp32 (guard, all), guarded auto
    assert group.decodes == (DecodeConfig(False), DecodeConfig(True, "fp32"), DecodeConfig(True, "auto"))
    assert [v.name for v in group.variants_for(DecodeConfig(False))] == ["baseline", "guard_encode", "hires_parity", "post_resize", "off-auto"]


def test_hires_with_latent_upscaler_shares_everything_but_parity():
    variants = plan_variants("ablation", SDFixSettings())
    groups = sampling_groups(variants, hires=True, latent_upscaler=True)
    assert [[v.name for v in g.variants] for g in groups] == [["baseline", "precision_guard", "guard_encode", "post_resize"], ["hires_parity", "all"]]
    assert [g.key for g in groups] == [(("hires_parity", False),), (("hires_parity", True),)]
    assert count_runs(groups) == 3  # one first pass + two Hires passes
    assert count_decodes(groups) == 4
    # Sampler already equal: parity cannot change the Hires pass, so it is shared too.
    same = sampling_groups(variants, hires=True, latent_upscaler=True, parity_changes_sampler=False)
    assert len(same) == 1 and count_runs(same) == 2


def test_hires_with_an_upscaler_model_groups_by_what_the_hires_pass_starts_from():
    base = SDFixSettings()
    variants = plan_variants("ablation", base)
    groups = sampling_groups(variants, hires=True, latent_upscaler=False)
    assert len(groups) == 6 and count_runs(groups) == 7
    assert all(len(g.decodes) == 1 for g in groups)
    # Filter and dtype only matter where a fix uses them.
    extra = [
        Variant("off-box", "off, BOX", base.changed(enabled=False, resize_filter="BOX", vae_dtype="auto")),
        Variant("resize-box", "resize BOX", variants[4].settings.changed(resize_filter="BOX")),
        Variant("guard-auto", "guard auto", variants[1].settings.changed(vae_dtype="auto")),
    ]
    groups = sampling_groups(variants + extra, hires=True, latent_upscaler=False)
    names = [[v.name for v in g.variants] for g in groups]
    assert ["baseline", "off-box"] in names
    assert ["post_resize"] in names and ["resize-box"] in names and ["precision_guard"] in names and ["guard-auto"] in names
    assert sorted(v.name for g in groups for v in g.variants) == sorted(v.name for v in variants + extra)


def test_groups_and_empty_input():
    assert sampling_groups([], hires=True, latent_upscaler=False) == [] and count_runs([]) == 0
    variants = plan_variants("ab", SDFixSettings())
    groups = sampling_groups(variants, hires=True, latent_upscaler=False)
    assert [g.variants for g in groups] == [(variants[0],), (variants[1],)]
    assert count_runs(groups) == 3


# --- effect notes ----------------------------------------------------------------------------------


def _ablation_images(photo, changed=("precision_guard",)):
    variants = plan_variants("ablation", SDFixSettings())
    sharper = photo.filter(ImageFilter.UnsharpMask(2, 80, 0))
    images = {v.name: (sharper if v.name in changed or v.name == "all" else photo.copy()) for v in variants}
    return variants, images


def test_effect_notes_compare_each_fix_alone_with_the_baseline(photo):
    variants, images = _ablation_images(photo)
    context = RunContext(hires=True, upscaler="R-ESRGAN 4x+", first_sampler="DPM++ 2M", first_scheduler="Karras",
                         hires_sampler="Use same sampler", hires_scheduler="Use same scheduler")
    notes = effect_notes(variants, images, context)
    guard = next(n for n in notes if n.startswith("precision_guard:"))
    assert guard.startswith("precision_guard: changed ") and "% of pixels" in guard
    assert "guard_encode: no effect in this run" in notes  # an encode happened, it just changed nothing
    assert "hires_parity: no effect, first and Hires sampler already equal" in notes
    assert "post_resize: no effect in this run" in notes
    assert any(n.startswith("all fixes: changed") and n.endswith("vs baseline (SDFix off)") for n in notes)


def test_effect_notes_explain_why_a_fix_could_not_act(photo):
    variants, images = _ablation_images(photo, changed=())
    latent = RunContext(hires=True, upscaler="Latent", first_sampler="Euler a", hires_sampler="DPM++ 2M")
    notes = effect_notes(variants, images, latent)
    assert "precision_guard: no effect in this run" in notes
    assert "guard_encode: no effect, no VAE encode happened (latent Hires upscaler, not img2img)" in notes
    assert "post_resize: no effect, no upscaler model ran (Latent)" in notes
    assert "hires_parity: no effect in this run" in notes  # samplers differ: nothing explains it
    no_hires = effect_notes(variants, images, RunContext(first_sampler="Euler a"))
    assert "hires_parity: no effect, no Hires pass" in no_hires and "post_resize: no effect, no upscaler ran" in no_hires


def test_effect_notes_in_ab_mode_use_the_run_shape(photo):
    variants = plan_variants("ab", SDFixSettings())
    images = {"A": photo, "B": photo.filter(ImageFilter.GaussianBlur(1))}
    notes = effect_notes(variants, images, RunContext(hires=False))
    assert notes[0].startswith("B: SDFix on: changed") and notes[0].endswith("vs A: SDFix off")
    assert "hires_parity: no effect, no Hires pass" in notes
    assert "post_resize: no effect, no upscaler ran" in notes
    assert "guard_encode: no effect, no VAE encode happened (no Hires pass, not img2img)" in notes
    assert not any(n.startswith("precision_guard:") for n in notes)  # not measured alone, nothing rules it out
    same = effect_notes(variants, {"A": photo, "B": photo.copy()}, RunContext(hires=True, upscaler="R-ESRGAN 4x+",
                                                                             first_sampler="Euler", hires_sampler="Euler"))
    assert same == ["B: SDFix on: identical to A: SDFix off", "hires_parity: no effect, first and Hires sampler already equal"]


def test_effect_notes_for_the_plain_none_upscaler_depend_on_the_filter(photo):
    context = RunContext(hires=True, upscaler="None")
    lanczos = plan_variants("ab", SDFixSettings())
    box = plan_variants("ab", SDFixSettings(resize_filter="BOX"))
    images = {"A": photo, "B": photo.copy()}
    assert any(n.startswith("post_resize: no effect, no upscaler model ran (None)") for n in effect_notes(lanczos, images, context))
    assert not any(n.startswith("resize:") for n in effect_notes(box, images, context))


def test_run_context_sampler_equality():
    assert RunContext(hires=False, first_sampler="Euler").sampler_already_equal is None
    assert RunContext(hires=True).sampler_already_equal is None
    assert RunContext(hires=True, first_sampler="Euler", first_scheduler="Karras",
                      hires_sampler="Euler", hires_scheduler="Karras").sampler_already_equal is True
    assert RunContext(hires=True, first_sampler="Euler", first_scheduler="Karras",
                      hires_scheduler="Automatic").sampler_already_equal is False
    assert RunContext(hires=True, first_sampler="Euler", hires_sampler="DPM++ 2M").sampler_already_equal is False
    assert RunContext(hires=True, upscaler="Latent (bicubic antialiased)").latent_upscaler
    assert RunContext(hires=True).latent_upscaler and not RunContext(hires=True, upscaler="4x-UltraSharp").latent_upscaler


# --- metrics ---------------------------------------------------------------------------------------


def test_metrics_table_on_a_real_photo(photo):
    blurred = photo.filter(ImageFilter.GaussianBlur(0.8))
    sharper = photo.filter(ImageFilter.UnsharpMask(2, 120, 0))
    rows = metrics_table({"A": blurred, "B": photo, "C": sharper}, {"A": 1.5, "B": 2}, "A",
                         labels={"A": "A: SDFix off", "B": "B: SDFix on"})
    assert [r["name"] for r in rows] == ["A", "B", "C"]
    assert [r["label"] for r in rows] == ["A: SDFix off", "B: SDFix on", "C"]
    ref, b, c = rows
    assert ref["reference"] and not b["reference"]
    assert math.isinf(ref["psnr"]) and ref["ssim"] == pytest.approx(1.0)
    assert ref["laplacian_ratio"] == 1.0 and ref["high_frequency_ratio"] == 1.0
    report = compare_detail(blurred, photo)
    assert b["psnr"] == pytest.approx(report.psnr) and b["ssim"] == pytest.approx(report.ssim)
    assert b["laplacian_ratio"] == pytest.approx(report.laplacian_ratio)
    assert b["high_frequency_ratio"] == pytest.approx(report.high_frequency_ratio)
    assert 1 < b["high_frequency_ratio"] < c["high_frequency_ratio"]  # more detail than the smeared reference
    assert 1 < b["laplacian_ratio"] < c["laplacian_ratio"]
    assert (ref["time_s"], b["time_s"], c["time_s"]) == (1.5, 2.0, None)


def test_metrics_table_handles_size_mismatch_and_unknown_reference(photo):
    rows = metrics_table({"A": photo, "B": photo.resize((64, 64))}, {}, "A")
    assert rows[1]["psnr"] is None and rows[1]["ssim"] is None and rows[1]["laplacian_variance"] > 0
    with pytest.raises(ValueError, match="reference"):
        metrics_table({"A": photo}, {}, "B")


def test_metrics_json_is_strict_json(photo):
    flat = Image.new("RGB", (32, 32), (128, 128, 128))
    rows = metrics_table({"A": flat, "B": photo.resize((32, 32))}, {"A": 1.0}, "A")
    rows[1]["ssim"] = float("nan")
    document = metrics_json(rows, notes=["precision_guard: no effect in this run"])
    text = json.dumps(document, allow_nan=False)
    back = json.loads(text)
    assert back["reference"] == "A" and back["format"] == "sdfix-ab-metrics/1"
    assert back["variants"][0]["psnr"] == "inf"
    assert back["variants"][1]["laplacian_ratio"] == "inf"  # detail against a flat reference
    assert back["variants"][1]["ssim"] is None and back["variants"][1]["time_s"] is None
    assert back["notes"] == ["precision_guard: no effect in this run"]
    assert isinstance(back["variants"][1]["psnr"], float)


def test_metrics_display_rows(photo):
    rows = metrics_table({"A": photo, "B": photo.filter(ImageFilter.GaussianBlur(1))}, {"B": 3.25}, "A")
    headers, table = metrics_display(rows)
    assert len(headers) == len(table[0]) == 8
    assert table[0][0] == "A (reference)" and table[0][1] == "∞" and table[0][-1] == "–"
    assert table[1][-1] == "3.25" and float(table[1][1]) == pytest.approx(rows[1]["psnr"], abs=0.01)


# --- heatmap, grid, HTML ---------------------------------------------------------------------------


def test_heatmap_validates_gain_and_amplifies(photo):
    blurred = photo.filter(ImageFilter.GaussianBlur(1))
    for bad in (0.5, 65, True, "4", float("nan"), None):
        with pytest.raises(SettingsError) as err:
            heatmap(photo, blurred, bad)
        assert "heatmap_gain" in err.value.problems
    low, high = heatmap(photo, blurred, 1), heatmap(photo, blurred, 64)
    assert np.array_equal(np.asarray(heatmap(photo, blurred, 4)), np.asarray(difference_heatmap(photo, blurred, 4.0)))
    assert np.asarray(high, dtype=float).mean() > np.asarray(low, dtype=float).mean() + 20


def test_compose_grid_places_labelled_images(photo):
    a = photo.resize((40, 30))
    b = Image.new("RGB", (40, 30), (0, 200, 0))
    grid = compose_grid([a, b], ["A: off", "B"])
    strip = grid.height - 30
    assert grid.size == (80, 30 + strip) and 10 <= strip <= 40
    pixels = np.asarray(grid)
    assert np.array_equal(pixels[strip:, :40], np.asarray(a)) and np.array_equal(pixels[strip:, 40:], np.asarray(b))
    label_a, label_b = pixels[:strip, :40], pixels[:strip, 40:]
    assert (label_a < 100).all(axis=-1).sum() > 10  # text drawn in black on white
    assert (label_a < 100).all(axis=-1).sum() > (label_b < 100).all(axis=-1).sum()  # "A: off" is longer than "B"


def test_compose_grid_wraps_truncates_and_survives_any_label(photo):
    images = [photo.resize((32, 32))] * 6
    grid = compose_grid(images, ["x" * 200, "", "λ ünïcode ✓", "d", "e", "f"])
    strip = grid.height // 2 - 32
    assert grid.size == (96, 2 * (32 + strip))  # 6 images: 3 columns, 2 rows
    assert (np.asarray(grid)[:strip, 32:64] == 255).all()  # the long label stays in its own cell
    with pytest.raises(ValueError, match="labels"):
        compose_grid(images, ["a"])
    with pytest.raises(ValueError):
        compose_grid([], [])


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_compare_html_structure_and_escaping():
    a = png_base64(Image.new("RGB", (4, 4), "red"))
    b = png_base64(Image.new("RGB", (4, 4), "blue"))
    markup = compare_html(a, b, ("A: off", 'B "on" <script>'))
    parser = _Collector()
    parser.feed(markup)
    tags = parser.tags
    assert tags[0][0] == "div" and tags[0][1]["class"] == "sdfix-compare" and tags[0][1]["tabindex"] == "0"
    assert tags[0][1]["data-mode"] == "slider"
    images = [attrs for tag, attrs in tags if tag == "img"]
    assert [i["data-role"] for i in images] == ["a", "b"]
    assert images[0]["src"] == "data:image/png;base64," + a and images[1]["alt"] == 'B "on" <script>'
    assert "<script>" not in markup
    for bad in ('" onerror="alert(1)', "", b"abc"):
        with pytest.raises(ValueError):
            compare_html(bad, b)
    with pytest.raises(ValueError, match="two labels"):
        compare_html(a, b, ("only one",))


def test_png_base64_round_trip(photo):
    import base64
    import io

    back = Image.open(io.BytesIO(base64.b64decode(png_base64(photo))))
    assert np.array_equal(np.asarray(back), np.asarray(photo))


# --- saving ------------------------------------------------------------------------------------


def test_save_comparison_writes_images_with_infotext_grid_and_metrics(tmp_path, photo):
    variants = plan_variants("ab", SDFixSettings())
    images = {"A": photo, "B": photo.filter(ImageFilter.GaussianBlur(1))}
    infotexts = {"A": "a portrait, ünïcode ✓\nSteps: 20, Seed: 7, SDFix: on=0",
                 "B": "a portrait\nSteps: 20, Seed: 7, SDFix: " + SDFixSettings().to_infotext()}
    document = metrics_json(metrics_table(images, {"A": 1.0, "B": 1.1}, "A"), notes=["x"])
    out = tmp_path / "outputs" / "sdfix-ab"
    paths = save_comparison(out, "00012-7", variants, images, infotexts, document)
    assert paths["images"] == {"A": out / "00012-7-A.png", "B": out / "00012-7-B.png"}
    assert paths["grid"] == out / "00012-7-grid.png" and paths["metrics"] == out / "00012-7-metrics.json"
    for name in ("A", "B"):
        with Image.open(paths["images"][name]) as saved:
            assert saved.info["parameters"] == infotexts[name]
            assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(images[name]))
    with Image.open(paths["grid"]) as grid:
        assert grid.width == 256 and grid.info["parameters"] == infotexts["A"]
    assert json.loads(paths["metrics"].read_text()) == json.loads(json.dumps(document))

    before = {p: p.read_bytes() for p in out.iterdir()}
    again = save_comparison(out, "00012-7", variants, images, infotexts, document)
    assert again["images"]["A"].name == "00012-7-1-A.png" and again["metrics"].name == "00012-7-1-metrics.json"
    assert {p: p.read_bytes() for p in before} == before  # nothing overwritten


def test_save_comparison_moves_the_whole_set_when_one_name_is_taken(tmp_path, photo):
    variants = plan_variants("ab", SDFixSettings())
    (tmp_path / "x-grid.png").write_bytes(b"someone else's")
    paths = save_comparison(tmp_path, "x", variants, {"A": photo, "B": photo}, {}, [])
    assert paths["images"]["A"].name == "x-1-A.png" and paths["grid"].name == "x-1-grid.png"
    assert (tmp_path / "x-grid.png").read_bytes() == b"someone else's"
    assert not (tmp_path / "x-A.png").exists()
    assert json.loads(paths["metrics"].read_text())["variants"] == []


def test_save_comparison_rejects_paths_and_skips_missing_images(tmp_path, photo):
    variants = plan_variants("ablation", SDFixSettings())
    for bad in ("../x", "a/b", "", ".."):
        with pytest.raises(ValueError):
            save_comparison(tmp_path, bad, variants, {"baseline": photo}, {}, {})
    paths = save_comparison(tmp_path, "run", variants, {"baseline": photo, "all": photo}, {}, {})
    assert list(paths["images"]) == ["baseline", "all"]
    with pytest.raises(ValueError, match="no images"):
        save_comparison(tmp_path, "run", variants, {}, {}, {})


# --- infotext, seed ------------------------------------------------------------------------------


def _parsed(**extra):
    """What the WebUI's parse_generation_parameters returns for a Hires.fix image (strings + its defaults)."""
    params = {
        "Prompt": "portrait, detailed skin", "Negative prompt": "blurry", "Steps": "28", "Sampler": "DPM++ 2M",
        "Schedule type": "Karras", "CFG scale": "6.5", "Seed": "1234567", "Size-1": "512", "Size-2": "768",
        "Model hash": "abc", "Denoising strength": "0.35", "Hires upscale": "2", "Hires steps": "12",
        "Hires upscaler": "R-ESRGAN 4x+", "Clip skip": "2", "Hires resize-1": 0, "Hires resize-2": 0,
        "Hires sampler": "Use same sampler", "Hires schedule type": "Use same scheduler",
        "Hires checkpoint": "Use same checkpoint", "Hires prompt": "", "Hires negative prompt": "",
        "SDFix": "on=1 guard=1 encode=0 parity=1 resize=1 filter=BICUBIC dtype=fp32 previews=0 warn=0.5",
    }
    params.update(extra)
    return params


def test_payload_from_infotext_with_hires():
    payload = payload_from_infotext(_parsed())
    assert payload == {
        "prompt": "portrait, detailed skin", "negative_prompt": "blurry", "steps": 28, "sampler_name": "DPM++ 2M",
        "scheduler": "Karras", "cfg_scale": 6.5, "seed": 1234567, "width": 512, "height": 768,
        "denoising_strength": 0.35, "enable_hr": True, "hr_scale": 2.0, "hr_resize_x": 0, "hr_resize_y": 0,
        "hr_upscaler": "R-ESRGAN 4x+", "hr_second_pass_steps": 12,
        "override_settings": {"CLIP_stop_at_last_layers": 2},
    }
    assert type(payload["steps"]) is int and type(payload["cfg_scale"]) is float and type(payload["hr_scale"]) is float


def test_payload_from_infotext_explicit_hires_sampler_and_resize():
    params = _parsed(**{"Hires sampler": "Euler a", "Hires schedule type": "Uniform", "Hires resize-1": "1024",
                        "Hires resize-2": "1536"})
    del params["Hires upscale"]
    payload = payload_from_infotext(params)
    assert payload["hr_sampler_name"] == "Euler a" and payload["hr_scheduler"] == "Uniform"
    assert (payload["hr_resize_x"], payload["hr_resize_y"]) == (1024, 1536) and "hr_scale" not in payload


def test_payload_from_infotext_without_hires():
    params = {"Prompt": "a cat", "Negative prompt": "", "Steps": "20", "Sampler": "DPM++ 2M Karras",
              "CFG scale": "7", "Seed": "-1", "Size-1": "512", "Size-2": "512", "Clip skip": "1",
              "Hires resize-1": 0, "Hires resize-2": 0, "Hires sampler": "Use same sampler"}
    payload = payload_from_infotext(params)
    assert payload["enable_hr"] is False and not any(k.startswith("hr_") for k in payload)
    assert payload["sampler_name"] == "DPM++ 2M Karras" and "scheduler" not in payload  # the API splits it
    assert payload["seed"] == -1 and payload["cfg_scale"] == 7.0 and "denoising_strength" not in payload


def test_payload_from_infotext_names_bad_entries():
    with pytest.raises(SettingsError) as err:
        payload_from_infotext(_parsed(Steps="many", **{"CFG scale": "x", "Size-1": "51.5", "Seed": True}))
    assert set(err.value.fields) == {"Steps", "CFG scale", "Size-1", "Seed"}
    with pytest.raises(SettingsError):
        payload_from_infotext("Steps: 20")


def test_sdfix_settings_come_from_the_infotext_not_the_payload():
    base = SDFixSettings(vae_dtype="auto")
    assert "SDFix" not in payload_from_infotext(_parsed()) and "alwayson_scripts" not in payload_from_infotext(_parsed())
    settings = settings_from_infotext(_parsed(), base)
    assert settings.guard_encode is False and settings.resize_filter == "BICUBIC" and settings.vae_dtype == "fp32"
    assert settings_from_infotext({"Prompt": "x"}, base) is base
    with pytest.raises(SettingsError):
        settings_from_infotext({"SDFix": "on=maybe"}, base)


def test_resolve_seed():
    expected = random.Random(5).randrange(4294967294)
    assert resolve_seed(-1, random.Random(5)) == expected
    assert resolve_seed(None, random.Random(5)) == expected == resolve_seed("", random.Random(5))
    assert resolve_seed("-1", random.Random(5)) == expected
    assert resolve_seed(42, random.Random(5)) == 42 and resolve_seed("42", None) == 42 and resolve_seed(7.0) == 7
    assert 0 <= resolve_seed(-1) < 4294967294
    for bad in (True, "abc", -5, 1.5, [1]):
        with pytest.raises(SettingsError) as err:
            resolve_seed(bad, random.Random(0))
        assert "seed" in err.value.problems


# --- the API body --------------------------------------------------------------------------------


def test_minimal_body_defaults_to_ab():
    body = {"payload": {"prompt": "x", "seed": 3}}
    request = ab_request_from_body(body, SDFixSettings(resize_filter="BOX"))
    assert isinstance(request, ABRequest)
    assert [v.name for v in request.variants] == ["A", "B"] and request.reference.name == "A"
    assert request.variants[1].settings.resize_filter == "BOX"
    assert (request.heatmap_gain, request.save) == (4.0, False)
    body["payload"]["prompt"] = "changed"
    assert request.payload["prompt"] == "x"  # a copy


def test_full_body():
    request = ab_request_from_body({
        "payload": {"prompt": "x", "alwayson_scripts": {"ADetailer": {"args": []}}},
        "variants": [{"name": "off", "settings": {"enabled": False}}, {"name": "on"}],
        "heatmap_gain": 16, "save": True,
    }, SDFixSettings())
    assert [v.name for v in request.variants] == ["off", "on"]
    assert request.heatmap_gain == 16.0 and request.save is True
    assert ab_request_from_body({"payload": {}, "variants": "ablation"}, SDFixSettings()).variants[0].name == "baseline"


@pytest.mark.parametrize("body,field", [
    ([1], "body"),
    ({}, "payload"),
    ({"payload": ["prompt"]}, "payload"),
    ({"payload": {"alwayson_scripts": {"SDFix": {"args": [{}]}}}}, "payload.alwayson_scripts.SDFix"),
    ({"payload": {"alwayson_scripts": {"sdfix": {"args": []}}}}, "payload.alwayson_scripts.sdfix"),
    ({"payload": {"alwayson_scripts": ["sdfix"]}}, "payload.alwayson_scripts"),
    ({"payload": {}, "variant": "ab"}, "variant"),
    ({"payload": {}, "variants": [{"name": 1}]}, "variants[0].name"),
    ({"payload": {}, "variants": []}, "variants"),
    ({"payload": {}, "heatmap_gain": 0}, "heatmap_gain"),
    ({"payload": {}, "heatmap_gain": 100}, "heatmap_gain"),
    ({"payload": {}, "heatmap_gain": "4"}, "heatmap_gain"),
    ({"payload": {}, "heatmap_gain": True}, "heatmap_gain"),
    ({"payload": {}, "save": "yes"}, "save"),
])
def test_bad_bodies_name_the_field(body, field):
    with pytest.raises(SettingsError) as err:
        ab_request_from_body(body, SDFixSettings())
    assert field in err.value.problems, err.value.problems
    assert field in str(err.value)


def test_every_body_problem_is_reported_at_once():
    with pytest.raises(SettingsError) as err:
        ab_request_from_body({"payload": 1, "variants": "abc", "heatmap_gain": -1, "save": 0, "x": 1}, SDFixSettings())
    assert set(err.value.fields) == {"payload", "variants", "heatmap_gain", "save", "x"}


def test_seed_is_resolved_once_for_all_variants():
    request = ab_request_from_body({"payload": {"prompt": "x", "seed": -1}}, SDFixSettings())
    resolved = request.with_resolved_seed(random.Random(1))
    assert resolved.payload["seed"] == random.Random(1).randrange(4294967294)
    assert request.payload["seed"] == -1 and "subseed" not in resolved.payload
    assert resolved.variants == request.variants
    fixed = ab_request_from_body({"payload": {"seed": 9, "subseed_strength": 0.3}}, SDFixSettings())
    fixed = fixed.with_resolved_seed(random.Random(2))
    assert fixed.payload["seed"] == 9 and 0 <= fixed.payload["subseed"] < 4294967294
    assert ab_request_from_body({"payload": {}}, SDFixSettings()).with_resolved_seed().payload["seed"] >= 0
    with pytest.raises(SettingsError, match="seed"):
        ab_request_from_body({"payload": {"seed": "x"}}, SDFixSettings()).with_resolved_seed()
