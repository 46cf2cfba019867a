"""The one guarded VAE call (lib_sdfix.vae.call): the VAE and its inputs in fp32 for the call, flags
guarded, autocast off; tiles give the untiled result, the estimate decides, batches go one image at a
time, out of memory retries tiled, and everything the call touched is as it was afterwards."""
from __future__ import annotations

import pytest
import torch

from lib_sdfix.failsafe import FixReport
from lib_sdfix.precision import read_flags
from lib_sdfix.vae import call as vae_call
from lib_sdfix.vae import estimate as vae_estimate
from lib_sdfix.vae import plan as vae_plan
from lib_sdfix.vae.call import guarded_call
from lib_sdfix.vae.net import network_of

from ..ldm_vae import LdmVAE
from .support import HALF, conv_vae, decode_fn, encode_fn, tensor_state

# --- fp32 for the call -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_vae_runs_in_fp32_and_weights_come_back_bit_identical(dtype):
    vae = conv_vae(dtype)
    weights_before = [p.detach().clone() for p in vae.parameters()]
    seen = {}

    def decode(latent):
        seen["latent"] = latent.dtype
        seen["weights"] = {p.dtype for p in vae.parameters()}
        seen["flags"] = (torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
        return vae(latent)

    latent = torch.randn(1, 4, 8, 8, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the caller's autocast must not reach the VAE
        out = guarded_call(decode, vae, latent)
    assert seen == {"latent": torch.float32, "weights": {torch.float32}, "flags": (False, False)}
    assert out.dtype == torch.float32
    assert all(p.dtype == dtype for p in vae.parameters())
    assert all(torch.equal(a, b) for a, b in zip(weights_before, vae.parameters()))
    reference = conv_vae(torch.float32)(latent)
    # fp32 math on weights that were rounded to `dtype`: close to the fp32 model, far closer than half math
    assert torch.allclose(out, reference, atol=0.1)


def test_low_precision_latent_is_upcast_never_downcast():
    vae = conv_vae(torch.float16)
    got = []
    guarded_call(lambda z: got.append(z.dtype) or vae(z), vae, torch.randn(1, 4, 4, 4, dtype=torch.float16))
    assert got == [torch.float32]


def test_upcast_off_leaves_dtypes_alone_but_still_guards_flags():
    vae = conv_vae(torch.float16)
    seen = []
    guarded_call(lambda z: seen.append((z.dtype, next(vae.parameters()).dtype, torch.backends.cudnn.allow_tf32)),
                 vae, torch.randn(1, 4, 4, 4, dtype=torch.float16), upcast=False)
    assert seen == [(torch.float16, torch.float16, False)]


def test_vae_weights_restored_on_keyboard_interrupt():
    vae = conv_vae(torch.float16)

    def interrupted(z):
        raise KeyboardInterrupt

    before = torch.backends.cudnn.allow_tf32
    with pytest.raises(KeyboardInterrupt):
        guarded_call(interrupted, vae, torch.randn(1, 4, 4, 4))
    assert {p.dtype for p in vae.parameters()} == {torch.float16}
    assert torch.backends.cudnn.allow_tf32 is before


def test_record_weights_tells_how_the_weights_ran():
    told = []
    half, full = conv_vae(torch.float16), conv_vae(torch.float32)
    latent = torch.randn(1, 4, 4, 4)
    guarded_call(half, half, latent, record_weights=told.append)
    guarded_call(full, full, latent, record_weights=told.append)
    exact = {name: p.detach().float() for name, p in half.named_parameters()}
    guarded_call(half, half, latent, exact=exact, record_weights=told.append)
    guarded_call(lambda z: None, half, latent, upcast=False, record_weights=told.append)
    assert told == ["upcast", "fp32", "exact"], "nothing to tell without upcast"


def test_a_vae_without_decoder_or_encoder_runs_untiled_even_when_tiling_is_asked_for():
    vae = conv_vae(torch.float16)
    latent = torch.randn(1, 4, 4, 4)
    runs = []
    out = guarded_call(vae, vae, latent, tiling=True, record=runs.append)
    assert out.dtype == torch.float32 and runs == []
    assert torch.equal(out, guarded_call(vae, vae, latent, tiling=False))


# --- planned: untiled, sliced or tiled -------------------------------------------------------------


def test_tiled_decode_and_encode_give_the_untiled_fp32_result(vae, small_strips):
    z = torch.randn(2, 4, 12, 20).to(HALF)
    x = (torch.rand(1, 3, 48, 40) * 2 - 1).to(HALF)
    before, flags = tensor_state(vae), read_flags()
    with torch.no_grad():
        untiled = vae_call.guarded_call(decode_fn(vae), vae, z, tiling=False)
        runs = []
        tiled = vae_call.guarded_call(decode_fn(vae), vae, z, tiling=True, record=runs.append)
        assert max(small_strips) >= 4, "cut into several strips"
        encoded = vae_call.guarded_call(encode_fn(vae), vae, x, tiling=False)
        encoded_tiled = vae_call.guarded_call(encode_fn(vae), vae, x, tiling=True, record=runs.append)
    assert tiled.dtype == torch.float32 and tiled.shape == untiled.shape
    assert (tiled - untiled).abs().max() < 1e-4, "GroupNorm statistics of the whole image, exact halos"
    assert (encoded_tiled - encoded).abs().max() < 1e-4
    assert [(r.kind, r.how) for r in runs] == [("decoder", "tiled"), ("encoder", "tiled")]
    assert tensor_state(vae) == before and read_flags() == flags
    assert "forward" not in vars(vae.decoder) and "forward" not in vars(vae.encoder)
    with torch.no_grad():
        assert (decode_fn(vae)(z).float() - untiled).abs().max() > 1e-3, "and afterwards the VAE is half again"


def test_tiling_false_runs_the_vae_as_it_is(monkeypatch):
    """Never planned: no estimate, the networks' own forward, out of memory straight to the caller."""
    vae = LdmVAE().to(HALF)
    z = torch.randn(1, 4, 8, 8).to(HALF)
    with torch.no_grad():
        planned = guarded_call(vae.decode, vae, z)
    monkeypatch.setattr(vae_call, "plan", lambda *a, **k: pytest.fail("planned"))
    replaced, runs = [], []

    def decode(latent):
        replaced.append("forward" in vars(vae.decoder))
        return vae.decode(latent)

    with torch.no_grad():
        out = guarded_call(decode, vae, z, tiling=False, record=runs.append)
    assert out.dtype == torch.float32 and replaced == [False] and runs == []
    assert torch.allclose(out, planned, atol=1e-6), "the same fp32 decode as the planned untiled one"
    calls = []

    def short_of_memory(latent):
        calls.append(latent.dtype)
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.OutOfMemoryError), torch.no_grad():
        guarded_call(short_of_memory, vae, z, tiling=False)
    assert calls == [torch.float32], "not retried tiled"
    assert all(p.dtype == HALF for p in vae.parameters())


def test_a_call_that_does_not_fit_runs_tiled_and_is_reported(vae, monkeypatch):
    z = torch.randn(1, 4, 16, 24).to(HALF)
    monkeypatch.setenv(vae_estimate.BUDGET_ENV, "0.002")
    report = FixReport()
    with torch.no_grad():
        out = vae_call.guarded_call(decode_fn(vae), vae, z, record=lambda run: vae_call.report_run(report, run))
        monkeypatch.delenv(vae_estimate.BUDGET_ENV)
        untiled = vae_call.guarded_call(decode_fn(vae), vae, z, record=lambda run: vae_call.report_run(report, run))
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
        sliced = vae_call.guarded_call(decode_fn(vae), vae, z, budget_gb=budget, record=runs.append)
        whole = vae_call.guarded_call(decode_fn(vae), vae, z, tiling=False)
    assert batches == [1, 1, 1, 3] and [r.how for r in runs] == ["sliced"]
    assert (sliced - whole).abs().max() < 1e-5
    assert "one image at a time in fp32" in runs[0].describe()


# --- out of memory ---------------------------------------------------------------------------------


def test_out_of_memory_untiled_retries_tiled_then_the_error_goes_to_the_front(vae, monkeypatch):
    z = torch.randn(1, 4, 16, 16).to(HALF)
    forward = vae.decoder.forward
    tries = []

    def short_of_memory(h, *args, **kwargs):
        tries.append(h.dtype)
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(vae.decoder, "forward", short_of_memory)
    runs = []
    before = tensor_state(vae)
    with torch.no_grad():
        out = vae_call.guarded_call(decode_fn(vae), vae, z, record=runs.append)
    assert tries == [torch.float32] and [(r.how, r.note) for r in runs] == [("tiled", "out of memory untiled")]
    monkeypatch.setattr(vae.decoder, "forward", forward)
    with torch.no_grad():
        assert (out - vae_call.guarded_call(decode_fn(vae), vae, z, tiling=False)).abs().max() < 1e-4

    strips = []

    def tiles_short_too(*args, **kwargs):
        strips.append(kwargs["strip_bytes"])
        raise MemoryError()

    monkeypatch.setattr(vae_call, "run_network", tiles_short_too)
    monkeypatch.setattr(vae.decoder, "forward", short_of_memory)
    with pytest.raises(MemoryError), torch.no_grad():
        vae_call.guarded_call(decode_fn(vae), vae, z)
    assert len(strips) >= 3 and strips[1] < strips[0], "smaller strips, then the forced call once more"
    assert tensor_state(vae) == before and vars(vae.decoder)["forward"] is short_of_memory
    with pytest.raises(ValueError), torch.no_grad():  # anything else is not retried
        monkeypatch.setattr(vae_call, "run_network", lambda *a, **k: (_ for _ in ()).throw(ValueError("bug")))
        vae_call.guarded_call(decode_fn(vae), vae, z, tiling=True)
    assert tensor_state(vae) == before


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
