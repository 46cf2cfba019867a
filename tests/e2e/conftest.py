"""End-to-end tests against a running AUTOMATIC1111 WebUI (v1.10.1) with SDFix and the observer.

Set ``SDFIX_E2E_URL`` (e.g. http://127.0.0.1:7860, a WebUI started with ``--no-half --precision
full``) and/or ``SDFIX_E2E_URL_FP16`` (``--precision half``).  Both must run with ``--api`` and have
``tests/e2e/observer`` installed as an extension beside SDFix (and ``SDFIX_OBSERVER_TF32=1`` in their
environment to reproduce a GPU user's TF32 flags).  Without either variable every test here skips.
"""
from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import pytest

URLS = {
    "fp32": os.environ.get("SDFIX_E2E_URL", "").rstrip("/"),
    "fp16": os.environ.get("SDFIX_E2E_URL_FP16", "").rstrip("/"),
}
TIMEOUT = float(os.environ.get("SDFIX_E2E_TIMEOUT", "900"))
# "user:password" when the WebUI runs with --api-auth (sent with every request unless auth=False)
AUTH = os.environ.get("SDFIX_E2E_AUTH", "")
MODES = [mode for mode, url in URLS.items() if url] or ["fp32"]


@dataclass
class WebUI:
    """A thin client for one running WebUI."""

    mode: str
    url: str

    def call(self, method: str, path: str, body: Optional[Any] = None, auth: Optional[bool] = None) -> Tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if AUTH and auth is not False:
            headers["Authorization"] = "Basic " + base64.b64encode(AUTH.encode()).decode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def ok(self, method: str, path: str, body: Optional[Any] = None) -> Any:
        status, payload = self.call(method, path, body)
        assert status == 200, (status, payload)
        return payload

    # -- generation helpers ------------------------------------------------------------------

    def txt2img(self, sdfix: Optional[List[Any]] = None, **fields: Any) -> "Result":
        return self._generate("/sdapi/v1/txt2img", sdfix, fields)

    def img2img(self, sdfix: Optional[List[Any]] = None, **fields: Any) -> "Result":
        return self._generate("/sdapi/v1/img2img", sdfix, fields)

    def _generate(self, path: str, sdfix: Optional[List[Any]], fields: Dict[str, Any]) -> "Result":
        body = {"prompt": "a portrait, detailed skin", "negative_prompt": "blurry", "seed": 1234,
                "steps": 2, "width": 64, "height": 64, "cfg_scale": 5, "sampler_name": "Euler",
                "scheduler": "Automatic", "send_images": True, "save_images": False}
        body.update(fields)
        if sdfix is not None:
            body["alwayson_scripts"] = {"sdfix": {"args": sdfix}}
        self.ok("POST", "/sdfix-observer/reset")
        payload = self.ok("POST", path, body)
        records = self.ok("GET", "/sdfix-observer/records")
        return Result(payload, records)


@dataclass
class Result:
    payload: Dict[str, Any]
    records: Dict[str, List[Dict[str, Any]]]

    @property
    def info(self) -> Dict[str, Any]:
        return json.loads(self.payload["info"])

    @property
    def infotext(self) -> str:
        return self.info["infotexts"][0]

    def params(self) -> Dict[str, str]:
        """The infotext's parameter line as key -> raw value (the WebUI's own quoting rules)."""
        import re

        line = self.infotext.strip().split("\n")[-1]
        out = {}
        for key, value in re.findall(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)', line):
            out[key] = json.loads(value) if value.startswith('"') and value.endswith('"') else value
        return out

    def image(self, index: int = 0):
        from PIL import Image

        return Image.open(io.BytesIO(base64.b64decode(self.payload["images"][index])))

    def pixels(self, index: int = 0) -> bytes:
        return self.image(index).convert("RGB").tobytes()

    def vae(self, part: str) -> List[Dict[str, Any]]:
        return [r for r in self.records["vae"] if r["part"] == part]


@pytest.fixture(scope="session", params=MODES)
def webui(request) -> WebUI:
    url = URLS[request.param]
    if not url:
        pytest.skip("set SDFIX_E2E_URL / SDFIX_E2E_URL_FP16 to a running WebUI to run the e2e tests")
    client = WebUI(request.param, url)
    status, flags = client.call("GET", "/sdapi/v1/cmd-flags")
    assert status == 200, f"{url} is not a WebUI with --api: {flags}"
    expected_half = request.param == "fp16"
    assert (flags.get("precision") == "half") == expected_half, f"{url} runs precision={flags.get('precision')}"
    status, _ = client.call("GET", "/sdfix-observer/flags")
    assert status == 200, "the SDFix e2e observer extension is not installed in this WebUI"
    client.ok("POST", "/sdfix-observer/hide-sdfix", {"hide": False})
    client.ok("POST", "/sdfix-observer/inject-failure", {"target": "none"})
    return client


def encode_png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
