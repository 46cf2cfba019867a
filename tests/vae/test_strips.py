"""The strip executor (lib_sdfix.vae.strips): the network run one strip at a time gives the
network's own fp32 result, with GroupNorm statistics of the whole image."""
from __future__ import annotations

import pytest
import torch

from lib_sdfix.vae import strips as vae_strips
from lib_sdfix.vae.fp32 import fp32_vae
from lib_sdfix.vae.net import network_of

from .support import HALF


def test_run_network_gives_the_networks_own_fp32_result(vae, small_strips):
    z = torch.randn(2, 4, 12, 20).to(HALF)
    graph = network_of(vae.decoder)
    with torch.no_grad():
        strips = vae_strips.run_network(graph, z, strip_bytes=48 * 1024, query_bytes=4 * 1024)
        assert all(p.dtype == HALF for p in vae.parameters()), "weights cast one operation at a time, not in place"
        with fp32_vae(vae):
            whole = vae.decoder(z.float())
    assert max(small_strips) >= 4, "cut into several strips"
    assert strips.dtype == torch.float32 and strips.shape == whole.shape
    assert (strips - whole).abs().max() < 1e-4


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
