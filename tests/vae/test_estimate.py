"""The memory estimate (lib_sdfix.vae.estimate): what one call of a VAE network holds untiled and
tiled, and what a call may use."""
from __future__ import annotations

import torch

from lib_sdfix.vae import estimate as vae_estimate
from lib_sdfix.vae.net import network_of

from .support import HALF


def test_fp32_doubles_the_activations_and_strips_hold_less(vae):
    graph = network_of(vae.decoder)
    est = vae_estimate.estimate(graph, (1, 4, 128, 128), HALF)
    large = vae_estimate.estimate(graph, (1, 4, 256, 256), HALF)
    assert large.tiled < large.native < large.fp32, "fp32 doubles the activations; strips hold less than either"
    slack = vae_estimate._SLACK
    assert large.fp32 - slack > 3.9 * (est.fp32 - slack), "grows with the area"


def test_the_estimate_follows_the_network_the_batch_and_the_cast_weights(vae):
    graph = network_of(vae.decoder)
    steps = list(vae_estimate.walk(graph, 16, 24))
    out_h, out_w = graph.output_size(16, 24)
    assert [step[0] for step in steps] == list(graph.ops)
    assert steps[0][1] == graph.in_channels and steps[0][3] == 16 * 24
    assert steps[-1][2] == graph.out_channels and steps[-1][4] == out_h * out_w and steps[-1][6] == out_w
    one = vae_estimate.estimate(graph, (1, 4, 16, 24), HALF)
    two = vae_estimate.estimate(graph, (2, 4, 16, 24), HALF)
    cast = vae_estimate.estimate(graph, (1, 4, 16, 24), HALF, cast_bytes=1000)
    slack = vae_estimate._SLACK
    assert one.output == two.output == (out_h, out_w)
    assert abs((two.fp32 - slack) - 2 * (one.fp32 - slack)) <= 1 and cast.fp32 == one.fp32 + 1000
    strip = vae_estimate.default_strip_bytes(graph, 16, 24, torch.device("cpu"))
    assert vae_estimate.MIN_STRIP <= strip <= 32 * 1024 ** 2 and one.strip_bytes == strip


def test_a_call_may_use_the_budget_from_the_environment(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv(vae_estimate.BUDGET_ENV, "0.5")
    assert vae_estimate.available_memory(cpu) == vae_estimate.GIB // 2
    monkeypatch.setattr(vae_estimate, "free_memory", lambda device: None)
    assert vae_estimate.available_memory(cpu) == vae_estimate.GIB // 2, "the budget alone"
    assert vae_estimate.available_memory(cpu, budget_gb=0) is None, "0: automatic, and nothing is known"
    monkeypatch.setenv(vae_estimate.BUDGET_ENV, "nonsense")
    assert vae_estimate.budget_from_env() == 0.0
