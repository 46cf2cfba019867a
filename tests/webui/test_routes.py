"""The routes (only with the host's API, behind its auth) and the host detection."""
from __future__ import annotations

import pytest

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


def test_host_detection_by_what_the_host_has(webui):
    from lib_sdfix.webui.host import current

    assert current().name == webui.host
