"""The variants of a comparison mode: A/B, ablation, late refine (the runs they share:
:mod:`lib_sdfix.sampling_plan`)."""
from __future__ import annotations

from typing import List

from lib_sdfix.sampling_plan import Variant
from lib_sdfix.settings import FIXES, SDFixSettings, SettingsError, describe

__all__ = ["MODES", "MAX_VARIANTS", "plan_variants"]

#: Comparison modes: A = SDFix off / B = SDFix on; baseline + each fix alone + all fixes; and the
#: user's SDFix without / with the late refine.
MODES = ("ab", "ablation", "refine")
#: Most variants one comparison may render (each one is at least a VAE decode, up to a full sampling).
MAX_VARIANTS = 8


def plan_variants(mode: str, base: SDFixSettings) -> List[Variant]:
    """The variants of ``mode``; ``base`` (the user's SDFix settings) supplies filter, dtype and the rest.

    "ab": A = SDFix off, B = ``base`` switched on.  "ablation": baseline (off), each fix alone (on,
    with only that toggle set), all fixes on.  "refine": A = ``base`` on without the late refine,
    "refine" = the same with it (``base``'s strength).  The first variant is always the reference.
    """
    off = base.changed(enabled=False)
    if mode == "ab":
        return [Variant("A", "A: SDFix off", off), Variant("B", "B: SDFix on", base.changed(enabled=True))]
    if mode == "refine":
        strength = base.late_refine_strength
        return [Variant("A", "A: SDFix on, no late refine", base.changed(enabled=True, late_refine=False)),
                Variant("refine", f"refine: SDFix on + late refine {strength:g}",
                        base.changed(enabled=True, late_refine=True))]
    if mode == "ablation":
        variants = [Variant("baseline", "baseline (SDFix off)", off)]
        for fix in FIXES:
            alone = {other.key: other.key == fix.key for other in FIXES}
            variants.append(Variant(fix.key, f"{fix.label} only", base.changed(enabled=True, **alone)))
        variants.append(Variant("all", "all fixes", base.changed(enabled=True, **{f.key: True for f in FIXES})))
        return variants
    raise SettingsError({"variants": f"unknown mode {describe(mode)}; expected one of {list(MODES)} or a list of variants"})
