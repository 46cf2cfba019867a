"""The names a WebUI accepts in the name fields of a txt2img payload, and each one's canonical spelling.

Why: the WebUI looks most names up only inside a generation, under its queue lock.  An unknown
Hires sampler fails an assert there and an unknown Hires or refiner checkpoint raises (HTTP 500);
an unknown schedule type, first-pass sampler, style, checkpoint override or Forge module is
silently replaced by a default, so a comparison would compare something other than what was asked.
A :class:`Names` holds what one field accepts exactly as the host's own registries and lookups
accept it (names, aliases, case rules; ``lib_sdfix.webui.hosts.names`` reads them from the host at
request time), so that every name is checked before anything runs and two spellings of one thing
("karras", "Karras") count as one value.  Host-free: the registries are passed in.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Callable, Collection, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from lib_sdfix.parity import is_same_marker
from lib_sdfix.settings import describe

__all__ = ["Names", "HIRES_ONLY", "SAME_AS_FIRST_PASS", "canonical_name", "unknown_name", "check_payload_names",
           "sampler_resolver", "payload_names", "sweep_names"]

#: Name fields the WebUI reads only when Hires.fix runs (``enable_hr``); otherwise they are ignored.
HIRES_ONLY = ("hr_upscaler", "hr_sampler_name", "hr_scheduler", "hr_checkpoint_name", "hr_additional_modules")
#: Fields where "as the first pass" (lib_sdfix.parity.SAME_MARKERS: the UI's "Use same sampler", "",
#: ...) becomes null, as the WebUI's txt2img UI sends it: its API would look "Use same sampler" up
#: as a sampler (an assert, HTTP 500) and take "" for "Automatic".
SAME_AS_FIRST_PASS = ("hr_sampler_name", "hr_scheduler")
#: Known names listed in a message (the rest are counted).
_SHOWN = 16


class Names:
    """The values one name field accepts and the canonical spelling of each.

    ``spellings``: accepted spelling -> canonical form (or just the names); ``resolve``: the host's
    own lookup for anything else (a checkpoint's partial title, a sampler with a schedule suffix),
    giving the canonical form or None; ``also``: values accepted as they are, which the host reads
    as "unset" ("", "Use same checkpoint", "None").  ``kind`` names the thing in messages.
    Iterating gives the canonical names (for suggestions and lists).
    """

    def __init__(self, kind: str, spellings: Union[Mapping[str, str], Iterable[str]], *,
                 resolve: Optional[Callable[[str], Optional[str]]] = None, also: Iterable[str] = ()) -> None:
        self.kind = kind
        self._spellings = dict(spellings) if isinstance(spellings, Mapping) else {n: n for n in spellings}
        self._names = list(dict.fromkeys(self._spellings.values()))
        self._resolve = resolve
        self._also = frozenset(also)

    def canonical(self, value: Any) -> Optional[str]:
        """The canonical form of ``value``, or None when the host would not find it."""
        if not isinstance(value, str):
            return None
        if value in self._also:
            return value
        found = self._spellings.get(value)
        if found is None and self._resolve is not None:
            found = self._resolve(value)
        return found

    def __contains__(self, value: Any) -> bool:
        return self.canonical(value) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def unknown(self, value: Any) -> str:
        """Why ``value`` is refused: the nearest names, then the known ones."""
        near = _nearest(value, self._names)
        shown = ", ".join(self._names[:_SHOWN]) + (f", ... ({len(self._names) - _SHOWN} more)"
                                                  if len(self._names) > _SHOWN else "")
        return (f"unknown {self.kind} {describe(value)}" + (f"; did you mean {', '.join(near)}?" if near else "")
                + f" (known: {shown or 'none'})")


def _nearest(value: Any, names: Sequence[str]) -> List[str]:
    """Names spelled like ``value``: the same but for case first, then difflib's, also against each
    name without its folder and "[hash]" (a checkpoint's title); short values only (difflib is quadratic)."""
    if not isinstance(value, str) or len(value) > 64:
        return []
    same_case = [n for n in names if n.lower() == value.lower()]
    forms: Dict[str, str] = {}
    for name in names:
        forms.setdefault(name, name)
        bare = _HASH_RE.sub("", name.replace("\\", "/").rsplit("/", 1)[-1])
        forms.setdefault(_EXTENSION_RE.sub("", bare), name)
    close = [forms[f] for f in difflib.get_close_matches(value, list(forms), n=3)]
    return list(dict.fromkeys(same_case + close))[:3]


_HASH_RE = re.compile(r"\s*\[[^]]*\]\s*$")
_EXTENSION_RE = re.compile(r"\.(safetensors|ckpt|pt|pth|bin|gguf)$", re.IGNORECASE)


def canonical_name(known: Collection[str], value: Any) -> Optional[str]:
    """``value``'s canonical form in ``known`` (a :class:`Names` or a plain collection of exact names)."""
    if isinstance(known, Names):
        return known.canonical(value)
    return value if value in known else None


def unknown_name(known: Collection[str], value: Any, kind: str) -> str:
    """The refusal of ``value`` for a field that takes ``known`` (``kind``: what a plain collection holds)."""
    if isinstance(known, Names):
        return known.unknown(value)
    near = _nearest(value, list(known))
    return f"unknown {kind} {describe(value)}" + (f"; did you mean {', '.join(near)}?" if near else "")


def sampler_resolver(samplers: Collection[str], suffixes: Sequence[Sequence[str]], *, any_case: bool = False,
                     any_case_samplers: Iterable[str] = ()) -> Callable[[str], Optional[str]]:
    """The hosts' ``get_sampler_and_scheduler`` for a sampler name that is not a registry name: a
    legacy combined name such as "DPM++ 2M Karras" is a registry sampler plus one schedule type's
    label, name or alias (``suffixes``: those three per schedule type, in the host's order; the host
    strips at most one per type).  ``any_case``: suffixes match in any case (reForge);
    ``any_case_samplers``: samplers found by name in any case (reForge's own).  The value is kept as
    it is (the host splits it); None where the host would run its first sampler instead."""
    folded = {name.lower(): name for name in any_case_samplers}

    def resolve(value: str) -> Optional[str]:
        if value.lower() in folded:
            return folded[value.lower()]
        name = value
        for options in suffixes:
            for option in options:
                suffix = " " + option
                if name.lower().endswith(suffix.lower()) if any_case else name.endswith(suffix):
                    name = name[:-len(suffix)]
                    break
        return value if name != value and name in samplers else None

    return resolve


def check_payload_names(fields: Dict[str, Any], names: Mapping[str, Collection[str]], path: str = "payload") -> Dict[str, str]:
    """Problems of the name fields of checked txt2img ``fields`` against ``names`` (field -> the names
    the host accepts there; "override_settings.sd_model_checkpoint" for an option), {field path: why};
    each accepted name is replaced in ``fields`` by its canonical form.  Hires fields count only with
    ``enable_hr`` (the host ignores them otherwise); "as the first pass" in :data:`SAME_AS_FIRST_PASS`
    becomes null.  Fields missing from ``fields`` (absent, or refused already) are skipped.
    """
    for key in SAME_AS_FIRST_PASS:
        if isinstance(fields.get(key), str) and is_same_marker(fields[key]):
            fields[key] = None
    problems: Dict[str, str] = {}
    hires = fields.get("enable_hr") is True
    for key, known in names.items():
        container, name = fields, key
        if "." in key:
            parent, name = key.split(".", 1)
            container = fields.get(parent)
            if not isinstance(container, dict):
                continue
        value = container.get(name)
        if value is None or (key in HIRES_ONLY and not hires):
            continue
        kind = key.replace("_", " ")
        if isinstance(value, list):
            for i, item in enumerate(value):
                found = canonical_name(known, item)
                if found is None:
                    problems[f"{path}.{key}[{i}]"] = unknown_name(known, item, kind)
                else:
                    value[i] = found
        elif isinstance(value, str):
            found = canonical_name(known, value)
            if found is None:
                problems[f"{path}.{key}"] = unknown_name(known, value, kind)
            else:
                container[name] = found
    return problems


def payload_names(samplers: Sequence[str], schedulers: Sequence[Tuple[str, str, Sequence[str]]], upscalers: Sequence[str],
                  checkpoints: Sequence[str], *, find_checkpoint: Callable[[str], bool],
                  checkpoint_alias: Callable[[str], bool], styles: Optional[Sequence[str]] = None,
                  vae_files: Optional[Sequence[str]] = None, suffix_any_case: bool = False,
                  any_case_samplers: Iterable[str] = ()) -> Dict[str, Names]:
    """Field -> what a host with these registries accepts there ("override_settings.<option>" for an
    option), as its lookups do (lib_sdfix.webui.hosts.names reads the registries from the running host):

    * ``sampler_name``, ``sampler_index``: a registry name (``samplers``), or one with a schedule type
      appended ("DPM++ 2M Karras"), which the API splits (:func:`sampler_resolver`; ``suffix_any_case``,
      ``any_case_samplers``: reForge); anything else would silently run the first sampler.
      ``hr_sampler_name``: a registry name only (``create_sampler`` asserts on anything else).
    * ``scheduler``, ``hr_scheduler``: a schedule type's name or label (``schedulers``: (name, label,
      aliases); the host's ``schedulers_map``: an alias or another case here silently means the
      sampler's default schedule); canonical: the label.  "" is unset.
    * ``hr_upscaler``: a latent mode or an upscaler's name (``upscalers``).
    * ``hr_checkpoint_name``, ``refiner_checkpoint``: what the host's ``get_closet_checkpoint_match``
      finds (``find_checkpoint``: any alias, or part of a title), or what the host reads as "none".
    * ``override_settings.sd_model_checkpoint``: an exact alias (``checkpoint_alias``; the host drops
      any other value silently); ``override_settings.sd_vae``: "Automatic", "auto", "None" or one of
      ``vae_files`` (the host falls back to no VAE), where the host reads the option (``vae_files`` given).
    * ``styles``: the saved styles, by exact name (an unknown one silently adds nothing), when given.
    """
    suffixes = [[label, name, *aliases] for name, label, aliases in schedulers]
    first = Names("sampler", samplers, resolve=sampler_resolver(samplers, suffixes, any_case=suffix_any_case,
                                                                any_case_samplers=any_case_samplers))
    schedule = Names("schedule type", {**{name: label for name, label, _ in schedulers},
                                       **{label: label for _, label, _ in schedulers}}, also=("",))

    def closest(value: str) -> Optional[str]:
        return value if find_checkpoint(value) else None

    names = {
        "sampler_name": first, "sampler_index": first, "hr_sampler_name": Names("sampler", samplers),
        "scheduler": schedule, "hr_scheduler": schedule, "hr_upscaler": Names("upscaler", upscalers),
        "hr_checkpoint_name": Names("checkpoint", checkpoints, resolve=closest, also=("", "Use same checkpoint")),
        "refiner_checkpoint": Names("checkpoint", checkpoints, resolve=closest, also=("", "None", "none")),
        "override_settings.sd_model_checkpoint": Names("checkpoint", checkpoints,
                                                       resolve=lambda v: v if checkpoint_alias(v) else None),
    }
    if styles is not None:
        names["styles"] = Names("style", styles)
    if vae_files is not None:
        names["override_settings.sd_vae"] = Names("VAE", ["Automatic", "None", *vae_files], also=("auto",))
    return names


def sweep_names(names: Mapping[str, Names]) -> Dict[str, Names]:
    """What a diagnosis sweep may set its axis to, from :func:`payload_names`: registry samplers (a
    cell's sampler is one sampler) and schedule types."""
    return {"sampler_name": names["hr_sampler_name"], "scheduler": names["scheduler"]}
