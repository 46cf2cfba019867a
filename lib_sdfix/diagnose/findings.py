"""Findings: what was measured, mapped to likely causes among the usual sampling problems (too few
steps, CFG, sampler, schedule, precision, the VAE).

Each rule reads plain numbers (metrics rows, a NaN-watch summary), fires only on the pattern it is
about, and words its cause as a likelihood -- "likely" or "possible", never certain: one seed and one
sweep narrow a cause down, they do not prove it.  Every finding carries the numbers behind it.
The thresholds are stated where they are used; they separate a clear trend from noise between
neighbouring cells on real models (a 15 % change in high-frequency energy is visible; 3 % is not).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from lib_sdfix.diagnose.plan import PRECISION_FIXES
from lib_sdfix.imaging.metrics import detail_ratio
from lib_sdfix.imaging.table import json_safe

__all__ = ["LikelyCause", "spearman", "rule_steps", "rule_cfg", "rule_sampler", "rule_schedule", "rule_precision",
           "rule_vae_capacity", "rule_vae_precision", "rule_step_timing", "rule_non_finite", "sweep_findings",
           "roundtrip_findings", "steps_findings", "LIKELY", "POSSIBLE"]

LIKELY, POSSIBLE = "likely", "possible"
_PRECISION_NAMES = " and ".join(PRECISION_FIXES)


@dataclass(frozen=True)
class LikelyCause:
    """One finding of a diagnosis: the symptom and its likely cause, how likely, one sentence with the
    numbers, the numbers themselves, what to try next, and the SDFix fixes (by their keys) that act on
    the cause.  (The diffusers audit's per-cause state is :class:`lib_sdfix.diffusers.Finding`.)"""

    key: str
    symptom: str
    cause: str
    likelihood: str
    text: str
    evidence: Dict[str, Any] = field(default_factory=dict)
    next_step: str = ""
    fixes: Tuple[str, ...] = ()  # keys of lib_sdfix.settings.FIXES that act on this cause (none: no SDFix fix does)

    def as_dict(self) -> Dict[str, Any]:
        return json_safe(asdict(self))


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Rank correlation (ties share their mean rank); 0 when either series is constant."""
    import numpy as np

    def ranks(values: Sequence[float]) -> Any:
        array = np.asarray(values, dtype=float)
        order = array.argsort(kind="stable")
        out = np.empty(len(array))
        out[order] = np.arange(len(array), dtype=float)
        for value in np.unique(array):  # ties: their mean rank
            tied = array == value
            out[tied] = out[tied].mean()
        return out

    if len(xs) < 2:
        return 0.0
    rx, ry = ranks(xs), ranks(ys)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def _finite(values: Sequence[Optional[float]]) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _swept(rows: Sequence[Mapping[str, Any]], axis: str) -> bool:
    """Whether ``rows`` are a sweep over ``axis`` (rows say what was swept; rows that do not say are taken as is)."""
    return bool(rows) and all(r.get("axis", axis) == axis for r in rows)


def _points(rows: Sequence[Mapping[str, Any]], key: str) -> List[tuple]:
    """(value, metric) of the rows that have both, sorted by value."""
    out = [(r["value"], r.get(key)) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return sorted(out, key=lambda p: p[0])


# --- sweeps -----------------------------------------------------------------------------------------


def rule_steps(rows: Sequence[Mapping[str, Any]]) -> Optional[LikelyCause]:
    """High-frequency energy that falls as steps rise: residual noise, too few steps or solver error.

    Fires when the fewest steps have at least 1.15x the high-frequency energy of the most steps and the
    fall is mostly monotone (rank correlation <= -0.6 with three or more cells); "likely" from 1.5x
    with a correlation <= -0.8."""
    if not _swept(rows, "steps"):
        return None
    points = _points(rows, "high_frequency_energy")
    if len(points) < 2:
        return None
    steps, hf = [p[0] for p in points], [p[1] for p in points]
    if hf[-1] <= 0:
        return None
    ratio, rho = hf[0] / hf[-1], spearman(steps, hf)
    monotone = len(points) < 3 or rho <= -0.6
    if ratio < 1.15 or not monotone:
        return None
    likely = ratio >= 1.5 and (len(points) < 3 or rho <= -0.8)
    levels_off = next(s for s, h in points if h <= hf[-1] * 1.05)
    how = LIKELY if likely else POSSIBLE
    return LikelyCause(
        "too_few_steps", "High-frequency noise or graininess", "insufficient sampling steps / solver error", how,
        f"High-frequency energy falls as steps rise ({hf[0]:.4f} at {steps[0]} steps, {hf[-1]:.4f} at {steps[-1]}: "
        f"x{ratio:.2f}); residual noise from too few steps or an aggressive solver is {how}. "
        f"It levels off at about {levels_off} steps.",
        {"steps": steps, "high_frequency_energy": hf, "ratio": ratio, "spearman": rho, "levels_off_at": levels_off},
        f"Use at least {levels_off} steps, or a less aggressive sampler at low step counts.")


def rule_cfg(rows: Sequence[Mapping[str, Any]]) -> Optional[LikelyCause]:
    """Fine detail (Laplacian variance) that falls as CFG rises past its peak: CFG too high.

    Fires when the highest CFG keeps at most 0.8x the detail of the peak, the peak is below the
    highest CFG, and beyond the peak detail mostly falls (rank correlation <= -0.6 over three or more
    cells); "likely" at 0.6x or less."""
    if not _swept(rows, "cfg_scale"):
        return None
    points = _points(rows, "laplacian_variance")
    if len(points) < 2:
        return None
    peak_at = max(range(len(points)), key=lambda i: points[i][1])
    peak_cfg, peak = points[peak_at]
    top_cfg, top = points[-1]
    if peak_at == len(points) - 1 or peak <= 0:
        return None
    ratio = top / peak
    tail = points[peak_at:]
    rho = spearman([p[0] for p in tail], [p[1] for p in tail]) if len(tail) >= 3 else -1.0
    if ratio > 0.8 or rho > -0.6:
        return None
    how = LIKELY if ratio <= 0.6 else POSSIBLE
    hf = {p[0]: p[1] for p in _points(rows, "high_frequency_energy")}
    return LikelyCause(
        "cfg_too_high", "Blurriness or lack of fine detail", "overly strong CFG scale", how,
        f"Fine detail falls as CFG rises past {peak_cfg:g}: Laplacian variance {peak:.4g} at CFG {peak_cfg:g}, "
        f"{top:.4g} at CFG {top_cfg:g} (x{ratio:.2f}); a CFG scale that is too high is {how} to smooth detail.",
        {"cfg_scale": [p[0] for p in points], "laplacian_variance": [p[1] for p in points],
         "high_frequency_energy": [hf.get(p[0]) for p in points], "peak_cfg": peak_cfg, "ratio": ratio, "spearman": rho},
        f"Try a CFG scale near {peak_cfg:g}.")


def _spread(rows: Sequence[Mapping[str, Any]], key: str, symptom: str, cause: str, what: str,
            rule_key: str, axis: str) -> Optional[LikelyCause]:
    """Cells at equal steps, seed and CFG that differ in fine detail by at least 1.3x (likely from 2x)."""
    if not _swept(rows, axis):
        return None
    named = [(r["value"], r.get(key)) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if len(named) < 2:
        return None
    low = min(named, key=lambda p: p[1])
    high = max(named, key=lambda p: p[1])
    if low[1] <= 0:
        spread = math.inf if high[1] > 0 else 1.0
    else:
        spread = high[1] / low[1]
    if spread < 1.3:
        return None
    how = LIKELY if spread >= 2.0 else POSSIBLE
    psnrs = {r["value"]: r.get("psnr") for r in rows}
    return LikelyCause(
        rule_key, symptom, cause, how,
        f"At the same seed, steps and CFG the {what}s differ in fine detail: Laplacian variance x{spread:.2f} between "
        f"{low[0]} (least) and {high[0]} (most); the {what} is a {how} cause of the softer look of {low[0]}.",
        {what: [p[0] for p in named], key: [p[1] for p in named], "spread": spread, "least": low[0],
         "most": high[0], "psnr_vs_reference": [psnrs.get(p[0]) for p in named]},
        f"Compare {low[0]} and {high[0]} at more steps; if the gap stays, prefer {high[0]} for detail.")


def rule_sampler(rows: Sequence[Mapping[str, Any]]) -> Optional[LikelyCause]:
    return _spread(rows, "laplacian_variance", "Blurriness or lack of fine detail", "sampler choice", "sampler",
                   "sampler_differs", "sampler_name")


def rule_schedule(rows: Sequence[Mapping[str, Any]]) -> Optional[LikelyCause]:
    return _spread(rows, "laplacian_variance", "High-frequency noise or blur", "noise schedule", "schedule",
                   "schedule_differs", "scheduler")


def rule_precision(rows: Sequence[Mapping[str, Any]]) -> Optional[LikelyCause]:
    """The image changes with the precision fixes (precision_guard, guard_encode): any change at all is "possible"; "likely" when it is
    visible -- below 40 dB PSNR, or high-frequency energy off by 5 % or more."""
    if not _swept(rows, "precision") or not all(isinstance(r["value"], bool) for r in rows):
        return None
    by_value = {r["value"]: r for r in rows}
    on, off = by_value.get(True), by_value.get(False)
    if on is None or off is None:
        return None
    between = off.get("psnr") if on.get("reference") else on.get("psnr")
    if not isinstance(between, (int, float)) or math.isinf(between):
        return None
    hf = detail_ratio(off["high_frequency_energy"], on["high_frequency_energy"])
    lap = detail_ratio(off["laplacian_variance"], on["laplacian_variance"])
    how = LIKELY if between < 40 or abs(hf - 1) >= 0.05 else POSSIBLE
    return LikelyCause(
        "precision", "Colour shifts, banding or lost detail", "numerical precision of the VAE decode", how,
        f"The image changes with {_PRECISION_NAMES}: {between:.1f} dB PSNR between off and on; without them "
        f"high-frequency energy is x{hf:.3f} and Laplacian variance x{lap:.3f} of the guarded decode; the decode's "
        f"precision is a {how} contributor.",
        {"psnr_off_vs_on": between, "high_frequency_ratio_off_vs_on": hf, "laplacian_ratio_off_vs_on": lap},
        f"Keep {_PRECISION_NAMES} on; run a VAE round trip to see how much the VAE's dtype loses.", PRECISION_FIXES)


_SWEEP_RULES = {"steps": rule_steps, "cfg_scale": rule_cfg, "sampler_name": rule_sampler,
                "scheduler": rule_schedule, "precision": rule_precision}


def sweep_findings(axis: str, rows: Sequence[Mapping[str, Any]], nan: Optional[Mapping[str, Any]] = None) -> List[LikelyCause]:
    """The findings of a sweep over ``axis``: rows carry "value" plus the metrics of lib_sdfix.imaging.metrics_table."""
    found = [f for f in (_SWEEP_RULES[axis](rows), rule_non_finite(nan)) if f is not None]
    return sorted(found, key=lambda f: f.likelihood != LIKELY)


# --- the VAE round trip -------------------------------------------------------------------------


def _row(rows: Sequence[Mapping[str, Any]], *names: str) -> Optional[Mapping[str, Any]]:
    by_name = {r["name"]: r for r in rows}
    return next((by_name[n] for n in names if n in by_name), None)


def rule_vae_capacity(rows: Sequence[Mapping[str, Any]]) -> Optional[LikelyCause]:
    """Even the full-precision round trip loses detail: the VAE itself.  Fires below 30 dB PSNR, under
    0.85x high-frequency energy or under 0.75x Laplacian variance of the original; "likely" below
    25 dB, 0.7x or 0.6x."""
    best = _row(rows, "fp32", "precision_guard")
    if best is None:
        return None
    value, hf, lap = best["psnr"], best["high_frequency_ratio"], best["laplacian_ratio"]
    if not _finite([value, hf, lap]) or (value >= 30 and hf >= 0.85 and lap >= 0.75):
        return None
    how = LIKELY if value < 25 or hf < 0.7 or lap < 0.6 else POSSIBLE
    what = "loses detail" if hf < 1 and lap < 1 else "does not reproduce the image"
    return LikelyCause(
        "vae_capacity", "Blurriness or lack of fine detail", "VAE decoder (latent diffusion)", how,
        f"Even in full precision ({best['name']}) the VAE round trip {what}: {value:.1f} dB PSNR, "
        f"high-frequency energy x{hf:.2f} and Laplacian variance x{lap:.2f} of the original; the VAE itself, "
        f"not sampling, is a {how} place where the difference comes from.",
        {"variant": best["name"], "psnr": value, "ssim": best.get("ssim"), "high_frequency_ratio": hf,
         "laplacian_ratio": lap},
        "Try another VAE (a fine-tuned decoder) on the same image; sampling settings cannot bring this detail back.")


def rule_vae_precision(rows: Sequence[Mapping[str, Any]]) -> Optional[LikelyCause]:
    """A lower precision loses what fp32 keeps: the host's own state (else fp16/bf16) against fp32.
    Fires below 45 dB PSNR against fp32 or 0.03 less high-frequency ratio; "likely" below 35 dB or 0.08."""
    anchor = _row(rows, "fp32", "precision_guard")
    if anchor is None:
        return None
    candidates = [r for r in rows if r["name"] in ("webui", "fp16", "bf16")
                  and isinstance(r.get("psnr_vs_fp32"), (int, float)) and not math.isinf(r["psnr_vs_fp32"])]
    webui = next((r for r in candidates if r["name"] == "webui"), None)
    worst = webui or (min(candidates, key=lambda r: r["psnr_vs_fp32"]) if candidates else None)
    if worst is None:
        return None
    value = worst["psnr_vs_fp32"]
    drop = anchor["high_frequency_ratio"] - worst["high_frequency_ratio"]
    if not math.isfinite(drop):  # a flat original has no high-frequency energy to lose
        drop = 0.0
    if value >= 45 and drop < 0.03:
        return None
    how = LIKELY if value < 35 or drop >= 0.08 else POSSIBLE
    guard = _row(rows, "precision_guard")
    label = str(worst.get("label") or worst["name"])
    if worst["name"] != "webui":
        who = f"the VAE in {worst['name']}"
    elif label.startswith("as loaded"):
        who = f"the VAE {label}"
    else:
        who = "the WebUI's own VAE precision"
    text = (f"{who[0].upper()}{who[1:]} loses what the {anchor['name']} round trip keeps: {value:.1f} dB PSNR against "
            f"{anchor['name']}, high-frequency energy x{worst['high_frequency_ratio']:.3f} of the original against "
            f"x{anchor['high_frequency_ratio']:.3f}; the VAE's precision is a {how} cause.")
    if guard is not None and guard is not anchor and isinstance(guard.get("psnr_vs_fp32"), (int, float)):
        text += f" With {_PRECISION_NAMES}: {guard['psnr_vs_fp32']:.1f} dB against {anchor['name']}."
    return LikelyCause(
        "vae_precision", "Colour shifts, banding or lost detail", "numerical precision (VAE dtype / TF32)", how, text,
        {"variant": worst["name"], "psnr_vs_fp32": value, "high_frequency_ratio": worst["high_frequency_ratio"],
         "high_frequency_ratio_fp32": anchor["high_frequency_ratio"], "high_frequency_drop": drop},
        f"Keep {_PRECISION_NAMES} on (fp32 VAE), or start the WebUI with --no-half-vae.", PRECISION_FIXES)


def roundtrip_findings(rows: Sequence[Mapping[str, Any]]) -> List[LikelyCause]:
    found = [f for f in (rule_vae_capacity(rows), rule_vae_precision(rows)) if f is not None]
    return sorted(found, key=lambda f: f.likelihood != LIKELY)


# --- intermediate steps ---------------------------------------------------------------------------


def rule_step_timing(rows: Sequence[Mapping[str, Any]]) -> List[LikelyCause]:
    """When high-frequency content appears, from each step's share of the final image's HF energy.

    Early (80 % reached within the first 40 % of steps): what forms this early follows the early
    noise schedule.  Late (80 % only in the last 25 %): late-stage detail reconstruction.  An
    overshoot (1.5x the final's somewhere before the end) points to unstable steps.  All "possible":
    the strip shows when, not why."""
    points = [(r["step"], r["steps"], r["high_frequency_ratio"]) for r in rows
              if isinstance(r.get("high_frequency_ratio"), (int, float)) and math.isfinite(r["high_frequency_ratio"])]
    if len(points) < 2:
        return []
    points.sort()
    total = points[0][1]
    found: List[LikelyCause] = []
    evidence = {"steps": [p[0] for p in points], "of": total, "high_frequency_ratio_to_final": [p[2] for p in points]}
    reached = next(((s, r) for s, _, r in points if r >= 0.8), None)
    if reached is not None and reached[0] / total <= 0.4:
        found.append(LikelyCause(
            "artifact_early", "High-frequency noise or graininess", "noise schedule (early steps)", POSSIBLE,
            f"High-frequency content is already at {reached[1]:.0%} of the final image's by step {reached[0]}/{total}: "
            "if the artifact is grain or speckle, it forms during the early, high-noise steps, and the noise schedule "
            "is a possible cause.", dict(evidence, reached_at=reached[0]),
            "Sweep the schedule type at these settings; compare where the artifact appears."))
    if reached is None or reached[0] / total >= 0.75:
        at = reached[0] if reached else total
        found.append(LikelyCause(
            "artifact_late", "Blurriness or lack of fine detail", "late-stage sampling (fine detail reconstruction)",
            POSSIBLE,
            f"Fine detail forms only in the last steps (high-frequency energy reaches 80 % of the final image's at "
            f"step {at}/{total}): if detail is missing or the artifact is fine-scale, late-stage detail reconstruction "
            "is a possible cause.", dict(evidence, reached_at=at),
            "Give the low-noise end more steps: more steps, or a Karras/exponential schedule."))
    peak = max(points[:-1], key=lambda p: p[2])
    if peak[2] >= 1.5:
        found.append(LikelyCause(
            "unstable_steps", "Structural or anatomical inconsistencies", "sampler instability", POSSIBLE,
            f"High-frequency energy overshoots to x{peak[2]:.2f} of the final image's at step {peak[0]}/{total} and "
            "falls again: unstable sampler steps mid-way are possible.", dict(evidence, peak_at=peak[0], peak=peak[2]),
            "Try a first-order sampler (Euler) or more steps at the same seed."))
    return found


def steps_findings(rows: Sequence[Mapping[str, Any]], nan: Optional[Mapping[str, Any]] = None) -> List[LikelyCause]:
    found = rule_step_timing(rows) + [f for f in (rule_non_finite(nan),) if f is not None]
    return sorted(found, key=lambda f: f.likelihood != LIKELY)


# --- NaN / Inf ------------------------------------------------------------------------------------


def rule_non_finite(summary: Optional[Mapping[str, Any]]) -> Optional[LikelyCause]:
    """Non-finite values (a NaN watch summary): in sampling, the UNet's numerics; first in the VAE
    decode, an overflowing half-precision VAE.  "likely": the values are there, the cause is the
    usual one for that stage."""
    if not summary or summary.get("finite", True) or not summary.get("first"):
        return None
    first = summary["first"]
    stage = first.get("stage")
    where = first.get("text") or stage
    if stage == "vae decode":
        cause, next_step, fixes = "VAE precision (a half-precision VAE overflowing)", \
            f"Keep {_PRECISION_NAMES} on (fp32 VAE), or start the WebUI with --no-half-vae.", PRECISION_FIXES
    else:
        cause, next_step, fixes = "numerical instability in sampling (half precision in the UNet)", \
            "Try --upcast-sampling or --no-half, a lower CFG scale, or another sampler at this seed.", ()
    return LikelyCause(
        "non_finite", "Color aberrations or shifts", cause, LIKELY,
        f"Non-finite values appeared first: {where}; {cause} is likely.",
        {"first": dict(first), "later": list(summary.get("later", []))}, next_step, fixes)
