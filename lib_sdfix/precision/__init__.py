"""Precision guard for VAE work: full fp32 math while the VAE runs, the process's flags untouched after.

Why: the WebUI (and PyTorch's own default for cuDNN) leaves TF32 on for convolutions, and the VAE is
almost all convolutions.  TF32 keeps a 10-bit mantissa, which flattens the fine colour gradients of
skin and hair into the "oil painting" look.  Turning TF32 off only for matmul is not enough.

:class:`precision_guard`: no TF32 (nor oneDNN bf16) for convolutions, RNNs and matmul at any level,
fp32 matmul precision "highest", no reduced-precision fp16/bf16 reductions or fp16 accumulation,
``cudnn.benchmark`` off; afterwards every flag holds exactly what it held before.  Every switch is
feature-detected, so torch 2.1-2.8 (``allow_tf32`` booleans only) and torch >= 2.9 (the
``fp32_precision`` tree as well) both work.  Re-entrant and thread-safe: one process-wide depth
counter; the first entrant snapshots and applies, the last one restores.  The VAE itself in fp32 for
the call is :mod:`lib_sdfix.vae.fp32`; :func:`lib_sdfix.vae.call.guarded_call` combines both.

How torch >= 2.9 keeps these flags (what the guard must respect):

* ``fp32_precision`` is a tree ``generic -> {cuda, mkldnn} -> {matmul, conv, rnn}``; a level set to
  "none" inherits its parent, and every getter returns the *inherited* value, so the raw setting of a
  level is only visible by changing its parent.  Restoring the value a level read as before would
  silently cut it off from later changes of its parent, so the guard works out the raw settings.
* The legacy switches are separate stored values that their setters tie to levels:
  ``cuda.matmul.allow_tf32 = b`` and ``set_float32_matmul_precision`` store the matmul precision and
  write the matmul levels; ``cudnn.allow_tf32 = b`` stores a flag and writes the conv and rnn levels
  ("tf32" or "none").  A legacy getter raises when its stored value disagrees with the levels.
* ``torch.backends.mkldnn.fp32_precision = x`` writes the *generic* level; the guard writes levels
  through ``torch._C``'s setter, which the public attributes wrap.
* In a fresh process (torch 2.13) cuDNN conv and rnn start at a default that reads "tf32" but follows
  a parent level once one is set.  No setter recreates it, and the guard has to write those levels
  (``cudnn.allow_tf32 = False`` inside keeps the legacy getter readable, which compiled code reads),
  so afterwards they hold "tf32" themselves: every read is the same, only a parent set later no
  longer reaches them (as in torch 2.9, where that default was a plain "tf32").

Modules, in the one direction they import each other: ``guard`` (the guard itself) and ``reads``
(reading, restoring and summarising the flags) both build on ``flags`` (the model of the three flag
APIs: levels, legacy switches, capabilities, the complete flag state and how to write it).
"""
from lib_sdfix.precision.guard import autocast_disabled, guard_depth, precision_guard, precision_guarded
from lib_sdfix.precision.reads import effective_tf32, flag_api, read_flags, restore_flags

__all__ = [
    "precision_guard",
    "precision_guarded",
    "autocast_disabled",
    "read_flags",
    "restore_flags",
    "effective_tf32",
    "flag_api",
    "guard_depth",
]
