"""Cause offload_hooks: two enable_model_cpu_offload() calls over shared modules compete (or stack)
until hardened; then one chain serves both pipelines."""
from __future__ import annotations

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("accelerate")

import torch

from lib_sdfix.diffusers import audit, harden

from .tiny_pipelines import (  # noqa: F401 -- one_thread and service_flags are autouse fixtures
    HALF,
    STEPS,
    enable_offload_like_diffusers_0_27,
    one_thread,
    run_img2img,
    run_txt2img,
    sd15_pair,
    service_flags,
)

# --- 3. CPU-offload hooks ------------------------------------------------------------------------


def _offload_hooks(module):
    from lib_sdfix.diffusers.offload import offload_hooks_on

    return offload_hooks_on(module)


def _assert_one_shared_chain(pipe, img2img):
    hooks = pipe._all_hooks
    assert img2img._all_hooks is hooks
    by_module = {id(h.model): h for h in hooks}
    for name in ("text_encoder", "unet", "vae"):
        module = getattr(pipe, name)
        attached = _offload_hooks(module)
        assert len(attached) == 1 and attached[0] is by_module[id(module)].hook, name
    assert by_module[id(pipe.unet)].hook.prev_module_hook is by_module[id(pipe.text_encoder)]
    assert by_module[id(pipe.vae)].hook.prev_module_hook is by_module[id(pipe.unet)]


@pytest.fixture
def pre_forward_counter(monkeypatch):
    from accelerate.hooks import CpuOffload

    counts = {}
    original = CpuOffload.pre_forward

    def counting(self, module, *args, **kwargs):
        counts[id(module)] = counts.get(id(module), 0) + 1
        return original(self, module, *args, **kwargs)

    monkeypatch.setattr(CpuOffload, "pre_forward", counting)
    return counts


def _diffusers_version():
    import diffusers

    return tuple(int(part) for part in diffusers.__version__.split(".")[:2])


def test_two_enable_model_cpu_offload_calls_compete_until_hardened(pre_forward_counter):
    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False, offload=True)
    found = audit(pipe, img2img)["offload_hooks"]
    assert found.present and "both pipelines called enable_model_cpu_offload() on the shared" in found.detail
    if _diffusers_version() >= (0, 28):  # the second call removed the first pipeline's hooks
        assert "txt2img pipeline's hooks are no longer attached" in found.detail
        assert all(not any(h.hook is a for a in _offload_hooks(h.model)) for h in pipe._all_hooks)
        run_txt2img(pipe)  # diffusers' cleanup re-registers txt2img's hooks: now img2img's are stale
        assert all(not any(h.hook is a for a in _offload_hooks(h.model)) for h in img2img._all_hooks)
    else:  # up to 0.27 it stacked a second hook on every shared module
        assert "unet has 2 CPU-offload hooks stacked" in found.detail
        run_txt2img(pipe)  # txt2img's cleanup removed both hooks and put back only its own
        assert all(not any(h.hook is a for a in _offload_hooks(h.model)) for h in img2img._all_hooks)
    assert audit(pipe, img2img)["offload_hooks"].present

    report = harden(pipe, img2img)
    assert "offload_hooks" in report.changed and report.after["offload_hooks"].present is False
    _assert_one_shared_chain(pipe, img2img)
    pre_forward_counter.clear()
    image = run_txt2img(pipe)
    assert pre_forward_counter[id(pipe.unet)] == STEPS and pre_forward_counter[id(pipe.text_encoder)] == 2
    _assert_one_shared_chain(pipe, img2img)
    run_img2img(img2img, image)
    _assert_one_shared_chain(pipe, img2img)
    assert audit(pipe, img2img)["offload_hooks"].present is False


def test_hooks_stacked_by_old_diffusers_are_collapsed_to_one(pre_forward_counter):
    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False)
    enable_offload_like_diffusers_0_27(pipe)
    enable_offload_like_diffusers_0_27(img2img)
    assert len(_offload_hooks(pipe.unet)) == 2
    found = audit(pipe, img2img)["offload_hooks"]
    assert found.present and "unet has 2 CPU-offload hooks stacked" in found.detail
    with torch.no_grad():
        pipe.unet(torch.randn(2, 4, 8, 8, dtype=HALF), 10, encoder_hidden_states=torch.randn(2, 77, 32, dtype=HALF))
    assert pre_forward_counter[id(pipe.unet)] == 2, "each forward ran two offload hooks"

    harden(pipe, img2img)
    _assert_one_shared_chain(pipe, img2img)
    pre_forward_counter.clear()
    with torch.no_grad():
        pipe.unet(torch.randn(2, 4, 8, 8, dtype=HALF), 10, encoder_hidden_states=torch.randn(2, 77, 32, dtype=HALF))
    assert pre_forward_counter[id(pipe.unet)] == 1
    assert audit(pipe, img2img)["offload_hooks"].present is False


def test_sequential_offload_is_left_alone():
    from accelerate import cpu_offload

    pipe, img2img = sd15_pair(text_encoder_dtype=HALF, scheduler_mismatch=False)
    cpu_offload(pipe.unet, execution_device="cpu")
    hooks_before = {name: getattr(m, "_hf_hook", None) for name, m in pipe.unet.named_modules()}
    report = harden(pipe, img2img)
    assert "offload_hooks" not in report.changed
    assert {name: getattr(m, "_hf_hook", None) for name, m in pipe.unet.named_modules()} == hooks_before
