"""SDFix's axes in the X/Y/Z plot script, for with/without grids."""
from __future__ import annotations

import math
from typing import Any, Callable, List, Tuple

from lib_sdfix.failsafe import logger
from lib_sdfix.settings import FIXES, OPTIONS, SettingsError
from lib_sdfix.settings import option as option_spec
from lib_sdfix.webui.apply import AXIS_NOTES_ATTR, OVERRIDES_ATTR

__all__ = ["XYZ_AXES", "SWITCHED_ON_BY", "parse_axis_value", "fit_axis_values", "add_xyz_axes"]
# How far a number may sit past a bound and still be that bound: the plot's float ranges are
# ``np.arange(start, end + step, step)``, whose values carry rounding noise ("0.05-0.75 (+0.1)" ends
# at 0.7500000000000002).
_NOISE = 1e-9


def _axes() -> Tuple[Tuple[str, str, Tuple[str, ...]], ...]:
    """(label, option, choices) for every option marked as an axis; fixes are labelled by the fix table.
    Numbers have no choices: the plot's own ranges work ("0.1-0.5 (+0.1)")."""
    labels = {f.key: f.label for f in FIXES}
    axes = []
    for o in OPTIONS:
        if not o.axis:
            continue
        if o.kind is bool:
            axes.append((f"SDFix: {labels.get(o.name, o.name.replace('_', ' '))}", o.name, ("on", "off")))
        else:
            label = o.label if o.label[1:2].isupper() else o.label[0].lower() + o.label[1:]  # "VAE dtype" stays
            axes.append((f"SDFix: {label}", o.name, o.choices))
    return tuple(axes)


#: X/Y/Z plot axes: (label, option, choices).  Booleans take "on"/"off"; numbers have no choices.
XYZ_AXES = _axes()
#: An axis over a fix's strength turns that fix on for its cells (a plot over the strength of a fix
#: that is off would be a grid of equal images).
SWITCHED_ON_BY = {"late_refine_strength": "late_refine"}


def parse_axis_value(option: str, raw: str) -> Any:
    """An X/Y/Z cell value as the option's type; raises SettingsError naming the option."""
    spec = option_spec(option)
    text = str(raw).strip()
    if spec.kind is bool:
        lowered = text.lower()
        if lowered in ("on", "true", "1", "yes"):
            return True
        if lowered in ("off", "false", "0", "no"):
            return False
        raise SettingsError({option: f"expected on or off, got {raw!r}"})
    try:
        return spec.validate(text) if spec.kind is str else spec.validate(float(text))
    except ValueError as err:
        raise SettingsError({option: str(err)}) from None


def _snapped(value: float, low: float, high: float) -> float:
    """``value``, with rounding noise past (or at) a bound taken off, and the plot's noisy inner
    values (0.30000000000000004) rounded to what the user typed."""
    for bound in (low, high):
        if abs(value - bound) <= _NOISE * max(1.0, abs(bound)):
            return bound
    return float(f"{value:.12g}")


def fit_axis_values(option: str, values: List[Any]) -> List[str]:
    """A number axis's values as the plot expands them, made to fit the option's range, in place.

    The WebUI's range syntax goes one step past its end whenever the step does not divide the range
    evenly in floating point: "0.2-0.6 (+0.2)" is [0.2, 0.4, 0.6, 0.8].  Values within rounding noise of
    a bound become the bound; values outside the range are left out of the plot, and the returned notes
    say which.  SettingsError (naming the option) when no value is left, or a value is no number."""
    spec = option_spec(option)
    if spec.kind is not float:
        for value in values:
            parse_axis_value(option, value)
        return []
    numbers = []
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise SettingsError({option: f"expected a number, got {value!r}"}) from None
        if math.isnan(number):
            raise SettingsError({option: f"expected a number, got {value!r}"})
        numbers.append(_snapped(number, spec.minimum, spec.maximum))
    kept = [n for n in numbers if spec.minimum <= n <= spec.maximum]
    left_out = [n for n in numbers if not spec.minimum <= n <= spec.maximum]
    if not kept:
        raise SettingsError({option: f"must be between {spec.minimum:g} and {spec.maximum:g}, "
                                     f"got {', '.join(format(n, 'g') for n in numbers)}"})
    values[:] = kept
    if not left_out:
        return []
    return [f"X/Y/Z {option} {' '.join(format(n, 'g') for n in left_out)} left out "
            f"(outside {spec.minimum:g}-{spec.maximum:g})"]


def add_xyz_axes() -> None:
    """Axes "SDFix: ..." in the X/Y/Z plot script (once, however often it is called)."""
    import modules.scripts as scripts

    xyz = next((d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"), None)
    if xyz is None or any(getattr(o, "label", "").startswith("SDFix:") for o in xyz.axis_options):
        return

    def apply(option: str) -> Callable:
        def apply_value(p: Any, x: Any, xs: Any) -> None:
            spec = option_spec(option)
            if spec.kind is float:  # the plot's rounding noise (when a host hands over unconfirmed values)
                try:
                    x = _snapped(float(x), spec.minimum, spec.maximum)
                except (TypeError, ValueError):
                    pass  # parse_axis_value names the option
            overrides = {**(getattr(p, OVERRIDES_ATTR, None) or {}), option: parse_axis_value(option, x)}
            if option in SWITCHED_ON_BY:  # unless an on/off axis of its own says otherwise
                overrides.setdefault(SWITCHED_ON_BY[option], True)
            setattr(p, OVERRIDES_ATTR, overrides)

        return apply_value

    def confirm(option: str) -> Callable:
        def check(p: Any, xs: Any) -> None:
            # The plot runs the very list it confirmed: out-of-range values are left out of it here.
            # SettingsError (naming the option) aborts the plot.
            notes = fit_axis_values(option, xs)
            if notes:
                for note in notes:  # in the log with the reason, in every cell's infotext via AXIS_NOTES_ATTR
                    logger.warning("SDFix: %s; the WebUI's float ranges (e.g. '0.2-0.6 (+0.2)') can end one "
                                   "step past their end", note)
                setattr(p, AXIS_NOTES_ATTR, [*(getattr(p, AXIS_NOTES_ATTR, None) or []), *notes])

        return check

    for label, option, choices in XYZ_AXES:
        if choices:
            xyz.axis_options.append(xyz.AxisOption(label, str, apply(option), confirm=confirm(option),
                                                   choices=lambda choices=choices: list(choices)))
        else:
            xyz.axis_options.append(xyz.AxisOption(label, float, apply(option), confirm=confirm(option)))
