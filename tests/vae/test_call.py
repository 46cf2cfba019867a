"""Tiled and sliced fp32 VAE calls (lib_sdfix.vae.call, vae_estimate, vae_net, vae_strips): tiles give the
untiled result, the estimate decides, batches go one image at a time, out of memory retries tiled,
and everything the call touched is as it was afterwards."""
from __future__ import annotations

import pytest
import torch

from lib_sdfix.vae import call as vae_call, estimate as vae_estimate, plan as vae_plan, strips as vae_strips
from lib_sdfix.failsafe import FixReport
from lib_sdfix.precision import read_flags
from lib_sdfix.vae.net import Unsupported, network_of

from ..ldm_vae import LdmVAE

HALF = torch.bfloat16  # what the CPU computes in half precision


def _diffusers_vae():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                                   up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, norm_num_groups=8,
                                   latent_channels=4).eval()


def _decode(vae):
    return (lambda z: vae.decode(z).sample) if hasattr(vae, "use_tiling") else vae.decode


def _encode(vae):
    return (lambda x: vae.encode(x).latent_dist.mean) if hasattr(vae, "use_tiling") else vae.encode


def _state(vae):
    return [(name, t.data_ptr(), t.dtype) for name, t in list(vae.named_parameters()) + list(vae.named_buffers())]


@pytest.fixture(params=["ldm", "diffusers"])
def vae(request):
    return (LdmVAE() if request.param == "ldm" else _diffusers_vae()).to(HALF)


@pytest.fixture
def small_strips(monkeypatch):
    """Strips of a few rows, so that small test images are cut into many of them."""
    counts = []
    real = vae_strips._strips

    def strips(height, rows):
        found = real(height, rows)
        counts.append(len(found))
        return found

    monkeypatch.setattr(vae_estimate, "default_strip_bytes", lambda *a, **k: 48 * 1024)
    monkeypatch.setattr(vae_estimate, "MIN_STRIP", 4 * 1024)
    monkeypatch.setattr(vae_plan, "default_strip_bytes", lambda *a, **k: 48 * 1024)
    monkeypatch.setattr(vae_plan, "MIN_STRIP", 4 * 1024)
    monkeypatch.setattr(vae_call, "MIN_STRIP", 4 * 1024)
    monkeypatch.setattr(vae_strips, "_strips", strips)
    return counts


def test_tiled_decode_and_encode_give_the_untiled_fp32_result(vae, small_strips):
    z = torch.randn(2, 4, 12, 20).to(HALF)
    x = (torch.rand(1, 3, 48, 40) * 2 - 1).to(HALF)
    before, flags = _state(vae), read_flags()
    with torch.no_grad():
        untiled = vae_call.guarded_call(_decode(vae), vae, z, tiling=False)
        runs = []
        tiled = vae_call.guarded_call(_decode(vae), vae, z, tiling=True, record=runs.append)
        assert max(small_strips) >= 4, "cut into several strips"
        encoded = vae_call.guarded_call(_encode(vae), vae, x, tiling=False)
        encoded_tiled = vae_call.guarded_call(_encode(vae), vae, x, tiling=True, record=runs.append)
    assert tiled.dtype == torch.float32 and tiled.shape == untiled.shape
    assert (tiled - untiled).abs().max() < 1e-4, "GroupNorm statistics of the whole image, exact halos"
    assert (encoded_tiled - encoded).abs().max() < 1e-4
    assert [(r.kind, r.how) for r in runs] == [("decoder", "tiled"), ("encoder", "tiled")]
    assert _state(vae) == before and read_flags() == flags
    assert "forward" not in vars(vae.decoder) and "forward" not in vars(vae.encoder)
    with torch.no_grad():
        assert (_decode(vae)(z).float() - untiled).abs().max() > 1e-3, "and afterwards the VAE is half again"


@pytest.mark.parametrize("kernel", ["group-norm", "missing"])
@pytest.mark.parametrize("offset", [0.0, 10.0, 1000.0])
def test_group_statistics_over_strips_are_the_whole_images(offset, kernel, monkeypatch):
    """Each strip's statistics come from the GroupNorm kernel and are combined in fp64: as close to
    the exact (fp64) statistics of the whole image as GroupNorm's own, a constant group included."""
    if kernel == "missing":  # a backend without the GroupNorm kernel: var_mean instead
        def missing(*args):
            raise NotImplementedError("no kernel")

        monkeypatch.setattr(vae_strips, "_group_norm_kernel", missing)
    torch.manual_seed(0)
    x = (torch.randn(64, 40, 9, dtype=torch.float64) * 0.5 + offset).float()
    x[:2] = 3.0  # group 0 is constant: its strips' rstd is infinite
    rows = vae_strips.Rows(64, 40, 9, torch.device("cpu"), torch.device("cpu"))
    for a in range(0, 40, 7):  # uneven strips, the last one short
        rows.append(x[:, a:a + 7])
    mean, rstd = rows.group_stats(32, 1e-6)
    var_ref, mean_ref = torch.var_mean(x.double().reshape(32, -1), dim=1, unbiased=False)
    rstd_ref = torch.rsqrt(var_ref + 1e-6)
    _, _, kernel = torch.ops.aten.native_group_norm(x.reshape(1, 64, -1), None, None, 1, 64, 360, 32, 1e-6)
    kernel_error = float(((kernel[0].double() - rstd_ref) / rstd_ref).abs().max())
    assert float(((rstd.double() - rstd_ref) / rstd_ref).abs().max()) <= 2 * kernel_error + 1e-7
    assert torch.allclose(mean.double(), mean_ref, rtol=1e-6, atol=1e-6)
    assert rstd[0] == pytest.approx(1e-6 ** -0.5, rel=1e-6)


def test_the_estimate_decides(vae, monkeypatch):
    graph = network_of(vae.decoder)
    shape = (1, 4, 128, 128)
    est = vae_estimate.estimate(graph, shape, HALF)
    large = vae_estimate.estimate(graph, (1, 4, 256, 256), HALF)
    assert large.tiled < large.native < large.fp32, "fp32 doubles the activations; strips hold less than either"
    slack = vae_estimate._SLACK
    assert large.fp32 - slack > 3.9 * (est.fp32 - slack), "grows with the area"
    fits = vae_plan.plan(graph, shape, torch.device("cpu"), native_dtype=HALF, available=est.fp32)
    short = vae_plan.plan(graph, shape, torch.device("cpu"), native_dtype=HALF, available=est.fp32 - 1)
    unknown = vae_plan.plan(graph, shape, torch.device("cpu"), native_dtype=HALF, available=None, budget_gb=0)
    assert (fits.how, short.how) == ("untiled", "tiled") and "GiB available" in short.reason
    monkeypatch.setattr(vae_estimate, "free_memory", lambda device: None)
    assert vae_plan.plan(graph, shape, torch.device("cpu"), native_dtype=HALF).how == "untiled"
    assert unknown.available is not None  # the CPU's MemAvailable
    monkeypatch.setenv(vae_estimate.BUDGET_ENV, "0.5")
    assert vae_estimate.available_memory(torch.device("cpu")) == vae_estimate.GIB // 2
    monkeypatch.setenv(vae_estimate.BUDGET_ENV, "nonsense")
    assert vae_estimate.budget_from_env() == 0.0


def test_a_call_that_does_not_fit_runs_tiled_and_is_reported(vae, monkeypatch):
    z = torch.randn(1, 4, 16, 24).to(HALF)
    monkeypatch.setenv(vae_estimate.BUDGET_ENV, "0.002")
    report = FixReport()
    with torch.no_grad():
        out = vae_call.guarded_call(_decode(vae), vae, z, record=lambda run: vae_call.report_run(report, run))
        monkeypatch.delenv(vae_estimate.BUDGET_ENV)
        untiled = vae_call.guarded_call(_decode(vae), vae, z, record=lambda run: vae_call.report_run(report, run))
    assert (out - untiled).abs().max() < 1e-4
    assert report.facts == {"tiled": "decode"}
    size = f"{out.shape[-1]}x{out.shape[-2]}"
    assert len(report.notes) == 1 and report.notes[0].startswith(f"VAE decode {size}: tiled in fp32 (fp32 needs ~")


def test_a_batch_that_does_not_fit_runs_one_image_at_a_time(vae, monkeypatch):
    z = torch.randn(3, 4, 16, 16).to(HALF)
    graph = network_of(vae.decoder)
    one = vae_estimate.estimate(graph, (1, 4, 16, 16), HALF, cast_bytes=vae_plan.fp32_cast_bytes(vae.decoder))
    three = vae_estimate.estimate(graph, (3, 4, 16, 16), HALF, cast_bytes=vae_plan.fp32_cast_bytes(vae.decoder))
    budget = (one.fp32 + three.fp32) / 2 / vae_estimate.GIB  # one image fits, three do not
    forward = vae.decoder.forward
    batches = []
    monkeypatch.setattr(vae.decoder, "forward", lambda h, *a, **k: batches.append(h.shape[0]) or forward(h, *a, **k))
    runs = []
    with torch.no_grad():
        sliced = vae_call.guarded_call(_decode(vae), vae, z, budget_gb=budget, record=runs.append)
        whole = vae_call.guarded_call(_decode(vae), vae, z, tiling=False)
    assert batches == [1, 1, 1, 3] and [r.how for r in runs] == ["sliced"]
    assert (sliced - whole).abs().max() < 1e-5
    assert "one image at a time in fp32" in runs[0].describe()


def test_out_of_memory_untiled_retries_tiled_then_the_error_goes_to_the_front(vae, monkeypatch):
    z = torch.randn(1, 4, 16, 16).to(HALF)
    forward = vae.decoder.forward
    tries = []

    def short_of_memory(h, *args, **kwargs):
        tries.append(h.dtype)
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(vae.decoder, "forward", short_of_memory)
    runs = []
    before = _state(vae)
    with torch.no_grad():
        out = vae_call.guarded_call(_decode(vae), vae, z, record=runs.append)
    assert tries == [torch.float32] and [(r.how, r.note) for r in runs] == [("tiled", "out of memory untiled")]
    monkeypatch.setattr(vae.decoder, "forward", forward)
    with torch.no_grad():
        assert (out - vae_call.guarded_call(_decode(vae), vae, z, tiling=False)).abs().max() < 1e-4

    strips = []

    def tiles_short_too(*args, **kwargs):
        strips.append(kwargs["strip_bytes"])
        raise MemoryError()

    monkeypatch.setattr(vae_call, "run_network", tiles_short_too)
    monkeypatch.setattr(vae.decoder, "forward", short_of_memory)
    with pytest.raises(MemoryError), torch.no_grad():
        vae_call.guarded_call(_decode(vae), vae, z)
    assert len(strips) >= 3 and strips[1] < strips[0], "smaller strips, then the forced call once more"
    assert _state(vae) == before and vars(vae.decoder)["forward"] is short_of_memory
    with pytest.raises(ValueError), torch.no_grad():  # anything else is not retried
        monkeypatch.setattr(vae_call, "run_network", lambda *a, **k: (_ for _ in ()).throw(ValueError("bug")))
        vae_call.guarded_call(_decode(vae), vae, z, tiling=True)
    assert _state(vae) == before


def test_out_of_memory_around_the_networks_retries_the_call_tiled(monkeypatch):
    vae = LdmVAE().to(HALF)
    z = torch.randn(1, 4, 8, 8).to(HALF)
    runs, calls = [], []

    def host_decode(latent):
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("CUDA error: out of memory")  # e.g. the host's own post-processing
        return vae.decode(latent)

    with torch.no_grad():
        vae_call.guarded_call(host_decode, vae, z, record=runs.append)
    assert calls == [0, 1] and [r.how for r in runs] == ["tiled"]


def test_an_unknown_structure_runs_as_it_is(monkeypatch):
    vae = LdmVAE().to(HALF)
    vae.decoder.mid.attn_1 = torch.nn.MultiheadAttention(8, 1)  # not what the executor knows
    with pytest.raises(Unsupported, match="mid.attn_1"):
        network_of(vae.decoder)
    report = vae_plan.memory_report(vae, 256, 256)
    assert report["available"] is False and "mid.attn_1" in report["reason"]
    with pytest.raises(Unsupported):
        network_of(torch.nn.Conv2d(4, 3, 3))


def test_memory_report_for_the_audits(vae, monkeypatch):
    monkeypatch.setenv(vae_estimate.BUDGET_ENV, "64")  # the machine's free memory is not the test's
    report = vae_plan.memory_report(vae, 1024, 1024)
    factor = 4 if isinstance(vae, LdmVAE) else 2  # the test networks' upsamplings
    assert report["available"] and report["input"] == [1, 4, 1024 // factor, 1024 // factor]
    assert report["output"] == [1024, 1024]
    assert report["fp32_bytes"] > report["native_bytes"] > report["fp32_tiled_bytes"] and report["tiled"] is False
    monkeypatch.setenv(vae_estimate.BUDGET_ENV, "0.01")
    small = vae_plan.memory_report(vae, 1024, 1024)
    assert small["tiled"] is True and small["budget_gb"] == 0.01 and "GiB available" in small["reason"]
    encoder = vae_plan.memory_report(vae, 512, 512, kind="encoder")
    assert encoder["input"] == [1, 3, 512, 512]
