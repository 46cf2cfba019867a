"""The five causes a diffusers service can have, which options turn their fixes on, and the audit's
vocabulary (:class:`Finding`, :class:`Audit`).

Three causes are removed by fixes of :data:`lib_sdfix.settings.FIXES` and follow those fixes' options.
Two exist only in a diffusers service -- in the WebUI the host casts the embeddings and owns the
offloading -- so no option turns them on: they follow SDFix's master switch alone
(:data:`SERVICE_CAUSES`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from lib_sdfix.settings import FIXES, SDFixSettings

__all__ = ["CAUSES", "CAUSE_TITLES", "SERVICE_CAUSES", "Finding", "Audit", "cause_on", "dtype_name"]

#: Causes of a service's own making (embeddings in the text encoder's dtype, offload hooks registered
#: twice): no WebUI option, on whenever SDFix is.
SERVICE_CAUSES: Tuple[str, ...] = ("embeds_dtype", "offload_hooks")

#: Every cause, in the order the audit reports them.
CAUSES: Tuple[str, ...] = ("vae_precision", "embeds_dtype", "offload_hooks", "scheduler_mismatch", "hires_resize")

CAUSE_TITLES: Dict[str, str] = {
    "vae_precision": "VAE decode/encode in reduced precision (TF32, cuDNN autotuning, half-precision VAE)",
    "embeds_dtype": "prompt embeddings reach the UNet in another dtype",
    "offload_hooks": "CPU-offload hooks registered twice on shared modules",
    "scheduler_mismatch": "img2img / Hires pass runs another scheduler or schedule",
    "hires_resize": "blurring or repeated resize after the upscaler",
}


def cause_on(options: SDFixSettings, cause: str, patch: str = "") -> bool:
    """Whether ``options`` turn on the work against ``cause``: one of its fixes in the fix table is
    wanted (only those that need ``patch`` -- "decode" or "encode" -- when given), or, for a
    service cause, SDFix is on."""
    if cause not in CAUSES:
        raise KeyError(cause)
    if cause in SERVICE_CAUSES:
        return bool(options.enabled)
    return any(options.wants(f.key) for f in FIXES if f.cause == cause and (not patch or patch in f.patches))


def dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class Finding:
    """One cause: present (True), absent (False) or not observable (None), and the evidence."""

    cause: str
    present: Optional[bool]
    detail: str
    extra: Dict[str, Any] = field(default_factory=dict)  # structured evidence, e.g. the VAE's "fp32_memory"

    @property
    def title(self) -> str:
        return CAUSE_TITLES[self.cause]

    @property
    def status(self) -> str:
        return {True: "present", False: "absent", None: "not observed"}[self.present]


@dataclass(frozen=True)
class Audit:
    """What is wrong with a pipeline (pair): one :class:`Finding` per cause, in :data:`CAUSES` order."""

    findings: Tuple[Finding, ...]

    def __getitem__(self, cause: str) -> Finding:
        for finding in self.findings:
            if finding.cause == cause:
                return finding
        raise KeyError(cause)

    @property
    def present(self) -> List[str]:
        return [f.cause for f in self.findings if f.present]

    def as_dict(self) -> Dict[str, Dict[str, Any]]:
        return {f.cause: {"title": f.title, "present": f.present, "status": f.status, "detail": f.detail, **f.extra}
                for f in self.findings}

    def summary(self) -> str:
        return "\n".join(f"[{f.status:>12}] {f.cause}: {f.detail}" for f in self.findings)
