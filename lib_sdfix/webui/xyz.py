"""SDFix's axes in the X/Y/Z plot script, for with/without grids."""
from __future__ import annotations

from typing import Any, Callable, Tuple

from lib_sdfix.settings import FIXES, OPTIONS, SettingsError, option as option_spec

__all__ = ["XYZ_AXES", "SWITCHED_ON_BY", "parse_axis_value", "add_xyz_axes"]


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


def add_xyz_axes() -> None:
    """Axes "SDFix: ..." in the X/Y/Z plot script (once, however often it is called)."""
    import modules.scripts as scripts

    from lib_sdfix.webui.apply import OVERRIDES_ATTR

    xyz = next((d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"), None)
    if xyz is None or any(getattr(o, "label", "").startswith("SDFix:") for o in xyz.axis_options):
        return

    def apply(option: str) -> Callable:
        def apply_value(p: Any, x: Any, xs: Any) -> None:
            overrides = {**(getattr(p, OVERRIDES_ATTR, None) or {}), option: parse_axis_value(option, x)}
            if option in SWITCHED_ON_BY:  # unless an on/off axis of its own says otherwise
                overrides.setdefault(SWITCHED_ON_BY[option], True)
            setattr(p, OVERRIDES_ATTR, overrides)

        return apply_value

    def confirm(option: str) -> Callable:
        def check(p: Any, xs: Any) -> None:
            for x in xs:
                parse_axis_value(option, x)  # raises SettingsError naming the option: aborts the plot

        return check

    for label, option, choices in XYZ_AXES:
        if choices:
            xyz.axis_options.append(xyz.AxisOption(label, str, apply(option), confirm=confirm(option),
                                                   choices=lambda choices=choices: list(choices)))
        else:
            xyz.axis_options.append(xyz.AxisOption(label, float, apply(option), confirm=confirm(option)))
