"""End-to-end tests against running WebUIs with SDFix and the test observer installed.

Each host instance is named by its own environment variable; tests run against every instance that
is set and skip cleanly when none is:

=======================  =========  =========================================================================
variable                 mode       instance
=======================  =========  =========================================================================
SDFIX_E2E_URL            fp32       AUTOMATIC1111 v1.10.1, ``--no-half --precision full``
SDFIX_E2E_URL_FP16       fp16       AUTOMATIC1111, ``--precision half`` (fp16 VAE, as GPU users run it)
SDFIX_E2E_URL_UPCAST     upcast     AUTOMATIC1111, ``--precision half --upcast-sampling``
SDFIX_E2E_URL_NOHALFVAE  nohalfvae  AUTOMATIC1111, ``--no-half-vae`` (autocast: fp16 UNet, fp32 VAE; a GPU only)
SDFIX_E2E_URL_SDXL       sdxl       AUTOMATIC1111 with an SDXL checkpoint selected
SDFIX_E2E_URL_FORGE      forge      Forge, ``--always-cpu --vae-in-bf16``
SDFIX_E2E_URL_REFORGE    reforge    reForge, ``--always-cpu --vae-in-bf16`` and ``SDFIX_OBSERVER_DTYPE_VAE=fp32``
=======================  =========  =========================================================================

Reference instances used by single tests: ``SDFIX_E2E_URL_FORGE_FP32`` (Forge ``--vae-in-fp32``),
``SDFIX_E2E_URL_HALFVAE`` (AUTOMATIC1111 ``--precision half --vae-path`` of an fp32 VAE file, see
``make_fp32_vae.py``), ``SDFIX_E2E_URL_NOAPI`` (AUTOMATIC1111 started without ``--api``).  Every instance needs
``tests/e2e/observer`` installed as a
second extension and ``SDFIX_OBSERVER_TF32=1`` in its environment (sets TF32/benchmark at start as
an Ampere+ GPU does, so a CPU run reproduces a GPU user's flags).
"""
from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest


@dataclass(frozen=True)
class Mode:
    variable: str
    host: str
    precision: Optional[str] = None  # AUTOMATIC1111's --precision
    upcast: bool = False
    no_half_vae: bool = False
    sdxl: bool = False
    slow: bool = False  # half precision on this CPU: R-ESRGAN takes over 10 minutes


MODES_ALL = {
    "fp32": Mode("SDFIX_E2E_URL", "a1111", precision="full"),
    "fp16": Mode("SDFIX_E2E_URL_FP16", "a1111", precision="half", slow=True),
    "upcast": Mode("SDFIX_E2E_URL_UPCAST", "a1111", precision="half", upcast=True, slow=True),
    # AUTOMATIC1111 refuses --no-half-vae with --precision half, and its autocast precision needs a GPU
    "nohalfvae": Mode("SDFIX_E2E_URL_NOHALFVAE", "a1111", precision="autocast", no_half_vae=True, slow=True),
    "sdxl": Mode("SDFIX_E2E_URL_SDXL", "a1111", sdxl=True),
    "forge": Mode("SDFIX_E2E_URL_FORGE", "forge"),
    "reforge": Mode("SDFIX_E2E_URL_REFORGE", "reforge"),
}
URLS = {name: os.environ.get(mode.variable, "").rstrip("/") for name, mode in MODES_ALL.items()}
REFERENCE_URLS = {name: os.environ.get(f"SDFIX_E2E_URL_{name.upper()}", "").rstrip("/")
                  for name in ("forge_fp32", "halfvae", "noapi")}
TIMEOUT = float(os.environ.get("SDFIX_E2E_TIMEOUT", "900"))
# "user:password" when the WebUI runs with --api-auth (sent with every request unless auth=False)
AUTH = os.environ.get("SDFIX_E2E_AUTH", "")
MODES = [name for name, url in URLS.items() if url] or ["fp32"]


def call(url: str, method: str, path: str, body: Optional[Any] = None, auth: Optional[bool] = None) -> Tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if AUTH and auth is not False:
        headers["Authorization"] = "Basic " + base64.b64encode(AUTH.encode()).decode()
    request = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


@dataclass
class WebUI:
    """A thin client for one running WebUI."""

    mode: str
    url: str

    @property
    def spec(self) -> Mode:
        return MODES_ALL[self.mode]

    @property
    def host(self) -> str:
        return self.spec.host

    @property
    def slow(self) -> bool:
        """Half precision on this CPU: R-ESRGAN takes over 10 minutes (fp16 convolutions)."""
        return self.spec.slow or self.ok("GET", "/sdfix/v1/status")["environment"]["precision"] == "half"

    def call(self, method: str, path: str, body: Optional[Any] = None, auth: Optional[bool] = None) -> Tuple[int, Any]:
        return call(self.url, method, path, body, auth)

    def ok(self, method: str, path: str, body: Optional[Any] = None) -> Any:
        status, payload = self.call(method, path, body)
        assert status == 200, (status, payload)
        return payload

    # -- generation helpers ------------------------------------------------------------------

    def body(self, **fields: Any) -> Dict[str, Any]:
        """A small generation body for this host (Forge's API needs hr_additional_modules with Hires)."""
        body = {"prompt": "a portrait, detailed skin", "negative_prompt": "blurry", "seed": 1234,
                "steps": 2, "width": 64, "height": 64, "cfg_scale": 5, "sampler_name": "Euler",
                "scheduler": "Automatic", "send_images": True, "save_images": False}
        body.update(fields)
        if self.host == "forge":
            body.setdefault("hr_additional_modules", ["Use same choices"])
        return body

    def txt2img(self, sdfix: Optional[List[Any]] = None, **fields: Any) -> "Result":
        return self._generate("/sdapi/v1/txt2img", sdfix, fields)

    def img2img(self, sdfix: Optional[List[Any]] = None, **fields: Any) -> "Result":
        return self._generate("/sdapi/v1/img2img", sdfix, fields)

    def _generate(self, path: str, sdfix: Optional[List[Any]], fields: Dict[str, Any]) -> "Result":
        body = self.body(**fields)
        if path.endswith("img2img"):
            body.pop("hr_additional_modules", None)
        if sdfix is not None:
            body["alwayson_scripts"] = {**body.get("alwayson_scripts", {}), "sdfix": {"args": sdfix}}
        self.ok("POST", "/sdfix-observer/reset")
        payload = self.ok("POST", path, body)
        records = self.ok("GET", "/sdfix-observer/records")
        return Result(payload, records)

    def flags(self) -> Dict[str, Any]:
        return self.ok("GET", "/sdfix-observer/flags")


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


def _client(mode: str) -> WebUI:
    url = URLS[mode]
    if not url:
        pytest.skip("set SDFIX_E2E_URL* to running WebUIs to run the e2e tests (see tests/e2e/conftest.py)")
    client = WebUI(mode, url)
    # SDFix's status, not /sdapi/v1/cmd-flags: Forge's cmd-flags answers 500 (its pydantic 2 model).
    status, answer = client.call("GET", "/sdfix/v1/status")
    assert status == 200, f"{url} is not a WebUI with --api and SDFix: {str(answer)[:300]}"
    environment = answer["environment"]
    spec = MODES_ALL[mode]
    assert environment["host"] == spec.host, f"{url} is {environment['host']}, expected {spec.host}"
    if spec.precision:
        assert environment["precision"] == spec.precision, f"{url} runs precision={environment['precision']}"
    assert environment["upcast_sampling"] == spec.upcast, f"{url}: --upcast-sampling is {environment['upcast_sampling']}"
    assert environment["no_half_vae"] == spec.no_half_vae, f"{url}: --no-half-vae is {environment['no_half_vae']}"
    assert environment["sdxl"] == spec.sdxl, f"{url}: the loaded checkpoint is {environment['checkpoint']}"
    status, _ = client.call("GET", "/sdfix-observer/flags")
    assert status == 200, "the SDFix e2e observer extension is not installed in this WebUI"
    client.ok("POST", "/sdfix-observer/hide-sdfix", {"hide": False})
    client.ok("POST", "/sdfix-observer/inject-failure", {"target": "none"})
    return client


@pytest.fixture(scope="session", params=MODES)
def webui(request) -> WebUI:
    return _client(request.param)


def encode_png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def skip_slow(webui: WebUI, what: str) -> None:
    if webui.slow:
        pytest.skip(f"{what} in half precision on this CPU takes many minutes (shared/webui-offline/README.md)")


# --- the browser (test_browser.py, test_diagnose.py): Debian's chromium via Playwright, no download -----

CHROMIUM = os.environ.get("SDFIX_E2E_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page(tmp_path, webui):
    url = webui.url
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no system Chromium at {CHROMIUM}")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1100})
        page = context.new_page()
        page.sdfix_url = url
        yield page
        browser.close()


def screens_folder(tmp_path) -> Path:
    """Where browser tests put their screenshots: SDFIX_E2E_SCREENSHOTS, else pytest's tmp dir."""
    folder = Path(os.environ.get("SDFIX_E2E_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_diagnose_section(page, webui: WebUI, prompt: str, seed: int, **fields: Any) -> None:
    """Generate once (it becomes "the last txt2img"), open SDFix's tab at Diagnose, and fill its form with
    *Use last txt2img*."""
    import re

    webui.txt2img(prompt=prompt, seed=seed, **fields)
    page.goto(page.sdfix_url, timeout=120_000)
    page.locator("#tabs button").filter(has_text=re.compile(r"^\s*SDFix\s*$")).first.click(timeout=120_000)
    page.locator("#sdfix_sections button").filter(has_text="Diagnose").first.click()
    page.locator("#sdfix_dg_use_last").click()
    page.wait_for_function(f"() => document.querySelector('#sdfix_dg_prompt textarea').value.includes({prompt!r})",
                           timeout=60_000)
