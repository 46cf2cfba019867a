"""The package keeps the diffusers front's public names, and the documentation's examples import."""
import re
from pathlib import Path

import lib_sdfix.diffusers as front

ROOT = Path(__file__).resolve().parents[2]

PUBLIC = {
    "CAUSES", "CAUSE_TITLES", "Finding", "Audit", "HardenReport", "audit", "harden", "unharden", "fix_report",
    "guard_vae", "cast_prompt_embeds", "share_offload_chain", "share_scheduler", "HiresResult", "hires_fix",
    "Upscaler", "UpscalerUnavailable", "load_upscaler", "refine", "refine_generators",
}


def test_the_public_names_stay():
    assert set(front.__all__) == PUBLIC
    assert all(getattr(front, name, None) is not None for name in PUBLIC)


def test_the_documented_imports_work():
    text = "".join(path.read_text(encoding="utf-8") for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    imports = [line.strip() for block in blocks for line in block.splitlines() if line.strip().startswith("from lib_sdfix")]
    assert any("lib_sdfix.diffusers import" in line for line in imports)
    for line in imports:
        exec(line, {})
