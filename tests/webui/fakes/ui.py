"""Enough of gradio for the scripts' ``ui()``, and a block where it stands in for gradio."""
from __future__ import annotations

import contextlib
import sys
import types

from .base import new_module


def fake_gradio() -> types.ModuleType:
    """Enough of gradio for scripts' ``ui()``: components keep their ``value``; layouts are contexts."""
    gr = new_module("gradio")

    class Component:
        def __init__(self, *args, value=None, label=None, **kwargs):
            self.value, self.label, self.kwargs = value, label, kwargs

    class Layout(contextlib.ContextDecorator):
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    for name in ("Checkbox", "Slider", "Radio", "Dropdown", "Textbox", "Number"):
        setattr(gr, name, type(name, (Component,), {}))
    for name in ("Blocks", "Accordion", "Row", "Column", "Group"):
        setattr(gr, name, type(name, (Layout,), {}))
    return gr


@contextlib.contextmanager
def gradio_for_ui():
    """The fake gradio as ``gradio`` for the block (where the UI is built), whatever was there before."""
    before = sys.modules.get("gradio")
    sys.modules["gradio"] = fake_gradio()
    try:
        yield
    finally:
        if before is None:
            sys.modules.pop("gradio", None)
        else:
            sys.modules["gradio"] = before
