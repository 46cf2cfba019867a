"""Fixtures of the host-layer tests: every test named ``webui`` runs against the fakes of all three hosts."""
import pytest

from .fakes import HOSTS
from .support import make_env


@pytest.fixture(params=HOSTS)
def host(request):
    return request.param


@pytest.fixture
def webui(monkeypatch, host):
    env = make_env(monkeypatch, host)
    yield env
    from lib_sdfix.webui.callbacks import unload

    unload()
