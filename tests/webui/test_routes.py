"""The routes: only with the host's API, behind its auth; the status page."""
from __future__ import annotations

import pytest
import torch

from lib_sdfix.settings import SDFixSettings


@pytest.mark.parametrize("api,auth", [(True, None), (True, "sdfix:secret"), (False, None)])
def test_routes_exist_only_with_the_api_and_behind_its_auth(webui, api, auth):
    fastapi = pytest.importorskip("fastapi")
    testclient = pytest.importorskip("fastapi.testclient")
    from lib_sdfix.webui.routes import on_app_started

    webui.shared.cmd_opts.api = api
    webui.shared.cmd_opts.api_auth = auth
    app = fastapi.FastAPI()
    on_app_started(None, app)
    client = testclient.TestClient(app)
    if not api:
        assert client.get("/sdfix/v1/status").status_code == 404
        assert client.post("/sdfix/v1/ab", json={"payload": {}}).status_code == 404
        return
    creds = ("sdfix", "secret") if auth else None
    if auth:
        assert client.get("/sdfix/v1/status").status_code == 401
        assert client.get("/sdfix/v1/status", auth=("sdfix", "wrong")).status_code == 401
        assert client.post("/sdfix/v1/ab", json={"payload": {}}).status_code == 401
    status = client.get("/sdfix/v1/status", auth=creds)
    assert status.status_code == 200
    body = status.json()
    assert body["settings"] == SDFixSettings().as_dict() and body["environment"]["patched_now"] == []
    assert body["environment"]["host"] == webui.host
    bad = client.post("/sdfix/v1/ab", json={"payload": {"prompt": "x"}, "heatmap_gain": 0}, auth=creds)
    assert bad.status_code == 422 and "heatmap_gain" in bad.json()["detail"]


def test_status_reports_the_fp32_vae_peak_at_the_hires_size_and_whether_it_tiles(monkeypatch):
    from lib_sdfix.vae.estimate import BUDGET_ENV
    from lib_sdfix.webui import hooks
    from lib_sdfix.webui.routes import status

    from .fakes import FakeP
    from .support import decode, make_env, run

    monkeypatch.setattr(hooks, "_LAST_DECODE", {})
    env = make_env(monkeypatch, "a1111")
    assert status()["environment"]["vae_fp32_memory"] == {"available": False, "reason": "the VAE has no decoder",
                                                          "size_source": "Hires 2x of the native size (no decode seen yet)"}
    env = make_env(monkeypatch, "a1111", ldm_vae=True)
    memory = status()["environment"]["vae_fp32_memory"]
    assert memory["available"] and memory["size"] == [1024, 1024] and memory["tiled"] is False
    assert memory["fp32_bytes"] > memory["native_bytes"] > 0 and memory["weights_dtype"] == "float16"
    p = FakeP()
    script = run(env, p)
    decode(env, torch.randn(1, 4, 24, 16, dtype=torch.float16))
    script.postprocess(p, None)
    memory = status()["environment"]["vae_fp32_memory"]
    assert (memory["size"], memory["size_source"], memory["tiled"]) == ([64, 96], "last decode", False)
    monkeypatch.setenv(BUDGET_ENV, "0.0001")
    memory = status()["environment"]["vae_fp32_memory"]
    assert memory["tiled"] is True and "GiB available" in memory["reason"]
