"""The network read as operations (lib_sdfix.vae.net): both layouts recognised, read once per
module, anything else Unsupported saying what."""
from __future__ import annotations

import pytest
import torch

from lib_sdfix.vae import plan as vae_plan
from lib_sdfix.vae.net import Unsupported, network_of, vae_networks

from ..ldm_vae import LdmVAE
from .support import HALF


def test_both_layouts_are_read_as_their_operations(vae):
    decoder, encoder = network_of(vae.decoder), network_of(vae.encoder)
    assert (decoder.kind, encoder.kind) == ("decoder", "encoder")
    assert (decoder.in_channels, decoder.out_channels, encoder.in_channels) == (4, 3, 3)
    assert decoder.output_size(8, 8)[0] > 8 and encoder.output_size(32, 32)[0] < 32, "up- and downsampling"
    assert network_of(vae.decoder) is decoder, "read once per module"
    assert any(m is vae.decoder.conv_in for m in decoder.modules()), "the real submodules, no copies"


def test_vae_networks_are_its_decoder_and_encoder(vae):
    assert vae_networks(vae) == {"decoder": vae.decoder, "encoder": vae.encoder}
    assert vae_networks(vae.decoder) == {} and vae_networks(None) == {}


def test_an_unknown_structure_runs_as_it_is(monkeypatch):
    vae = LdmVAE().to(HALF)
    vae.decoder.mid.attn_1 = torch.nn.MultiheadAttention(8, 1)  # not what the executor knows
    with pytest.raises(Unsupported, match="mid.attn_1"):
        network_of(vae.decoder)
    report = vae_plan.memory_report(vae, 256, 256)
    assert report["available"] is False and "mid.attn_1" in report["reason"]
    with pytest.raises(Unsupported):
        network_of(torch.nn.Conv2d(4, 3, 3))
