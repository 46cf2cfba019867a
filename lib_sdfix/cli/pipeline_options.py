"""The speed and memory options of the diffusers front (host "diffusers" of lib_sdfix.diagnose.speed_options):
what this machine can measure, the value each is tried at, and each cell's state built on the pipeline and
undone after it.

:func:`switched` builds a cell's state explicitly, one option at a time (another VAE, UNet dtype,
channels-last, attention slicing, FreeU, tomesd, VAE slicing/tiling, torch.compile, CPU offload), each
step pushing its own undo; leaving the block -- normally or by an exception, also one raised while the
state is being built -- undoes them in reverse order.  A dtype change is undone from a copy of the UNet's
weights written to disk once (half precision and back would round them), so neither the copy nor the
rounding is in what the next cell measures.  :func:`pipeline_state` is what "back to the start" compares.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from lib_sdfix.diagnose.optimizations import FoundOption
from lib_sdfix.diagnose.speed_options import DIFFUSERS, options_for

__all__ = ["found_options", "default_requested", "fewer_steps", "Switcher", "pipeline_state", "FREEU",
           "OFFLOAD_ON_CPU"]

#: FreeU's published factors (the FreeU repository, as the diffusers docs give them): SDXL's, else SD1.x's.
FREEU = {"sdxl": {"s1": 0.6, "s2": 0.4, "b1": 1.1, "b2": 1.2}, "sd": {"s1": 0.9, "s2": 0.2, "b1": 1.5, "b2": 1.6}}
OFFLOAD_ON_CPU = "needs an accelerator: on a CPU the weights already live in CPU memory, there is nothing to offload"
_TOMESD_RATIO = 0.5


def fewer_steps(steps: int) -> int:
    """The step count the "fewer steps" cell tries by default: 3/5 of the run's (50 -> 30)."""
    return max(1, round(steps * 3 / 5))


def found_options(device: Any, steps: int, *, vae: Optional[str] = None, compile_ok: bool = False,
                  allow_offload_on_cpu: bool = False) -> List[FoundOption]:
    """Every diffusers option with the value a cell tries (the reference runs each at its quality setting;
    ``steps`` at the run's own), and why one cannot be measured here (``blocked``)."""
    cpu = getattr(device, "type", str(device)).split(":")[0] == "cpu"
    tried: Dict[str, Any] = {"unet_dtype": "bf16" if cpu else "fp16", "tomesd": _TOMESD_RATIO, "steps": steps,
                             "vae": vae or "pipeline"}
    blocked = {
        "torch_compile": "" if compile_ok else "slow to compile: pass --compile to measure it",
        "tomesd": "" if importlib.util.find_spec("tomesd") else "tomesd is not installed (pip install tomesd)",
        "vae": "" if vae else "name a VAE with --vae to measure it",
    }
    if cpu and not allow_offload_on_cpu:
        blocked.update(model_cpu_offload=OFFLOAD_ON_CPU, sequential_cpu_offload=OFFLOAD_ON_CPU)
    return [FoundOption(o, tried.get(o.key, True), blocked=blocked.get(o.key, "")) for o in options_for(DIFFUSERS)]


def default_requested(found: Sequence[FoundOption], steps: int) -> List[Tuple[str, Any]]:
    """What a run without ``--options`` asks for: every option at its tried value, fewer steps than the run's
    (the blocked ones too, so the notes say why they were not measured)."""
    return [(f.key, fewer_steps(steps) if f.key == "steps" else f.value) for f in found]


def _torch_dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _modules(pipe: Any) -> Dict[str, Any]:
    import torch

    return {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}


def pipeline_state(pipe: Any) -> Dict[str, Any]:
    """What a cell may change, per component: class, dtypes, devices, channels-last weights, offload hooks,
    a weight checksum (float64 sum), attention processors; the VAE's slicing/tiling, FreeU's factors."""
    import torch

    state: Dict[str, Any] = {}
    for name, module in sorted(_modules(pipe).items()):
        params = list(module.parameters())
        with torch.no_grad():
            checksum = float(sum(p.detach().double().sum().item() for p in params if p.device.type != "meta"))
        state[name] = {
            "class": type(module).__name__, "id": id(module),
            "dtypes": sorted({str(p.dtype) for p in params}), "devices": sorted({str(p.device) for p in params}),
            "channels_last": sum(1 for p in params if p.dim() == 4 and not p.is_contiguous()),
            "hooks": sum(1 for m in module.modules() if hasattr(m, "_hf_hook") or hasattr(m, "_tome_info")),
            "forward_hooks": sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in module.modules()),
            "checksum": checksum,
            "processors": sorted({type(p).__name__ for p in getattr(module, "attn_processors", {}).values()}),
        }
    vae = pipe.vae
    state["vae_flags"] = {k: getattr(vae, k, None) for k in ("use_slicing", "use_tiling")}
    state["freeu"] = [{k: getattr(b, k, "unset") for k in ("s1", "s2", "b1", "b2")} for b in pipe.unet.up_blocks]
    state["offload"] = {k: k in vars(pipe) for k in ("_offload_gpu_id", "_offload_device")}
    state["all_hooks"] = len(getattr(pipe, "_all_hooks", []) or [])
    return state


class Switcher:
    """Builds and undoes cells' states on one pipeline: the device, a scratch folder for the UNet's weights,
    and another VAE (loaded once, kept on the CPU between its cells)."""

    def __init__(self, pipe: Any, device: Any, scratch: str, vae_loader: Optional[Callable[[], Any]] = None) -> None:
        self.pipe, self.device, self.scratch, self.vae_loader = pipe, device, scratch, vae_loader
        self._weights: Optional[str] = None
        self._other: Any = None
        self.notes: List[str] = []

    def _saved_weights(self) -> str:
        import torch

        if self._weights is None:
            self._weights = os.path.join(self.scratch, "unet-weights.pt")
            torch.save(self.pipe.unet.state_dict(), self._weights)
        return self._weights

    def other_vae(self) -> Any:
        if self._other is None:
            if self.vae_loader is None:
                raise RuntimeError("no VAE to switch to (--vae)")
            self._other = self.vae_loader().to("cpu").eval()
        return self._other

    @contextlib.contextmanager
    def switched(self, changes: Mapping[str, Any]) -> Iterator[None]:
        """The pipeline with ``changes`` (key -> value; quality values change nothing) for the block."""
        with contextlib.ExitStack() as undo:
            for key in ("vae", "unet_dtype", "channels_last", "attention_slicing", "freeu", "tomesd", "vae_slicing",
                        "vae_tiling", "torch_compile", "model_cpu_offload", "sequential_cpu_offload"):
                value = changes.get(key)
                if value is None or value is False or value in ("fp32", "pipeline", 0.0):
                    continue
                if key == "model_cpu_offload" and changes.get("sequential_cpu_offload"):
                    self.notes.append("sequential CPU offload supersedes model CPU offload where both are on")
                    continue
                getattr(self, f"_{key}")(value, undo)
            yield

    # --- one option each: set it, push its undo ---------------------------------------------------------

    def _vae(self, path: Any, undo: contextlib.ExitStack) -> None:
        pipe, own = self.pipe, self.pipe.vae
        other = self.other_vae()

        def back() -> None:
            pipe.vae = own
            other.to("cpu")
            own.to(self.device)

        undo.callback(back)
        own.to("cpu")  # the pipeline's VAE leaves the device, as it would if the other one replaced it
        pipe.vae = other.to(self.device)

    def _unet_dtype(self, name: str, undo: contextlib.ExitStack) -> None:
        import torch

        unet = self.pipe.unet
        before = unet.dtype
        saved = self._saved_weights()

        dtype = _torch_dtype(name)

        def cast(_: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
            # The pipeline casts the prompt embeddings to the text encoder's dtype (fp32 here): to the UNet's.
            states = kwargs.get("encoder_hidden_states")
            if states is not None and states.dtype != dtype:
                kwargs["encoder_hidden_states"] = states.to(dtype)
            return args, kwargs

        def back() -> None:
            hook.remove()
            unet.to(before)
            unet.load_state_dict(torch.load(saved, map_location="cpu", mmap=True, weights_only=True))

        hook = unet.register_forward_pre_hook(cast, with_kwargs=True)
        undo.callback(back)
        unet.to(dtype)

    def _channels_last(self, _: Any, undo: contextlib.ExitStack) -> None:
        import torch

        unet = self.pipe.unet
        undo.callback(lambda: unet.to(memory_format=torch.contiguous_format))
        unet.to(memory_format=torch.channels_last)

    def _attention_slicing(self, _: Any, undo: contextlib.ExitStack) -> None:
        saved = {name: dict(m.attn_processors) for name, m in _modules(self.pipe).items() if hasattr(m, "attn_processors")}

        def back() -> None:
            for name, processors in saved.items():
                getattr(self.pipe, name).set_attn_processor(processors)

        undo.callback(back)
        self.pipe.enable_attention_slicing()

    def _freeu(self, _: Any, undo: contextlib.ExitStack) -> None:
        blocks = list(self.pipe.unet.up_blocks)
        missing = object()
        saved = [{k: getattr(b, k, missing) for k in ("s1", "s2", "b1", "b2")} for b in blocks]

        def back() -> None:
            for block, values in zip(blocks, saved):
                for key, value in values.items():
                    if value is missing:
                        if hasattr(block, key):
                            delattr(block, key)
                    else:
                        setattr(block, key, value)

        undo.callback(back)
        self.pipe.enable_freeu(**FREEU["sdxl" if "XL" in type(self.pipe).__name__ else "sd"])

    def _tomesd(self, ratio: float, undo: contextlib.ExitStack) -> None:
        import tomesd

        def back() -> None:
            tomesd.remove_patch(self.pipe)
            for module in self.pipe.unet.modules():
                if hasattr(module, "_tome_info"):
                    del module._tome_info

        undo.callback(back)
        tomesd.apply_patch(self.pipe, ratio=float(ratio))

    def _vae_flag(self, key: str, undo: contextlib.ExitStack) -> None:
        vae = self.pipe.vae
        before = getattr(vae, key, False)
        undo.callback(lambda: setattr(vae, key, before))
        setattr(vae, key, True)

    def _vae_slicing(self, _: Any, undo: contextlib.ExitStack) -> None:
        self._vae_flag("use_slicing", undo)

    def _vae_tiling(self, _: Any, undo: contextlib.ExitStack) -> None:
        self._vae_flag("use_tiling", undo)

    def _torch_compile(self, _: Any, undo: contextlib.ExitStack) -> None:
        import torch

        unet = self.pipe.unet
        mode = "reduce-overhead" if getattr(self.device, "type", "") == "cuda" else None

        def back() -> None:
            self.pipe.unet = unet

        undo.callback(back)
        self.pipe.unet = torch.compile(unet, mode=mode)

    def _offload(self, enable: Callable[..., Any], undo: contextlib.ExitStack) -> None:
        pipe = self.pipe
        before = {k: vars(pipe)[k] for k in ("_offload_gpu_id", "_offload_device") if k in vars(pipe)}

        def back() -> None:
            from accelerate.hooks import remove_hook_from_module

            for module in _modules(pipe).values():
                if any(hasattr(m, "_hf_hook") for m in module.modules()):
                    remove_hook_from_module(module, recurse=True)
            pipe._all_hooks = []
            for key in ("_offload_gpu_id", "_offload_device"):
                if key in before:
                    setattr(pipe, key, before[key])
                elif key in vars(pipe):
                    delattr(pipe, key)
            pipe.to(self.device)

        undo.callback(back)
        enable(device=self.device)

    def _model_cpu_offload(self, _: Any, undo: contextlib.ExitStack) -> None:
        self._offload(self.pipe.enable_model_cpu_offload, undo)

    def _sequential_cpu_offload(self, _: Any, undo: contextlib.ExitStack) -> None:
        self._offload(self.pipe.enable_sequential_cpu_offload, undo)
