"""Every precision test starts from the flags a WebUI sets at start and leaves no guard behind."""
from __future__ import annotations

import pytest

from lib_sdfix import precision

from ..flags import set_webui_flags
from .support import _torch_defaults


@pytest.fixture(autouse=True)
def webui_flags():
    _torch_defaults()
    set_webui_flags()
    yield
    assert precision.guard_depth() == 0, "a guard leaked"
    _torch_defaults()
    set_webui_flags()
