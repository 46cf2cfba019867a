"""Extension layout, install.py policy, preload flags, lazy imports and the standalone check."""
import argparse
import ast
import subprocess
import sys
from pathlib import Path

from .source_imports import imported_modules

ROOT = Path(__file__).resolve().parents[1]


def test_webui_extension_layout():
    for path in ["install.py", "preload.py", "scripts", "lib_sdfix", "javascript", "README.md", "tests"]:
        assert (ROOT / path).exists(), path


HOST_PACKAGES = ("modules", "backend", "ldm_patched", "modules_forge")


def test_only_lib_sdfix_webui_imports_the_host():
    """The core (and the diffusers front) import no host module and nothing of lib_sdfix.webui."""
    for path in (ROOT / "lib_sdfix").rglob("*.py"):
        in_webui = (ROOT / "lib_sdfix" / "webui") in path.parents
        for name in imported_modules(path):
            root = name.split(".")[0]
            if not in_webui:
                assert root not in HOST_PACKAGES, (path, name)
                assert not name.startswith("lib_sdfix.webui"), (path, name)


def _webui_module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _webui_imports(path: Path):
    """(module-level, function-level) lib_sdfix.webui modules ``path`` imports, by module name."""
    tree = ast.parse(path.read_text())
    modules = {_webui_module(p) for p in (ROOT / "lib_sdfix" / "webui").rglob("*.py")}
    top, inner = set(), set()
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names]
        else:
            continue
        found = {n for n in names if n in modules and n != "lib_sdfix.webui"}
        (inner if id(node) in nested else top).update(found)
    return top, inner


def test_webui_modules_import_each_other_at_module_level_without_cycles():
    """One direction per dependency: no import cycle among lib_sdfix.webui's modules, and none dodged by
    importing inside a function.  Two deferrals for start-up time, not cycles: tabs.py loads its
    sections when the host builds its UI, routes.py the runners where the host serves its API."""
    graph, deferred = {}, {}
    for path in (ROOT / "lib_sdfix" / "webui").rglob("*.py"):
        graph[_webui_module(path)], deferred[_webui_module(path)] = _webui_imports(path)
    assert {m: d for m, d in deferred.items() if d} == {
        "lib_sdfix.webui.tabs": {"lib_sdfix.webui.ab.tab", "lib_sdfix.webui.diagnose.tab"},
        "lib_sdfix.webui.routes": {"lib_sdfix.webui.ab.request", "lib_sdfix.webui.ab.runner",
                                   "lib_sdfix.webui.diagnose.runner"}}
    done, path = set(), []

    def visit(module):
        assert module not in path, " -> ".join(path[path.index(module):] + [module])
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_scripts_only_define_the_script_and_register():
    source = (ROOT / "scripts" / "sdfix.py").read_text()
    assert len(source.splitlines()) <= 200
    roots = {name.split(".")[0] for name in imported_modules(ROOT / "scripts" / "sdfix.py")}
    assert roots <= {"__future__", "typing", "modules", "lib_sdfix"}


def test_install_py_never_installs_pinned_packages():
    namespace = {"__name__": "sdfix_install_under_test"}
    exec(compile((ROOT / "install.py").read_text(), "install.py", "exec"), namespace)
    for _name, spec in namespace["REQUIREMENTS"]:
        base = spec.split("=")[0].split("<")[0].split(">")[0].strip().lower()
        assert base not in namespace["NEVER_INSTALL"], spec
    fake = [("sdfix_missing_pkg", "sdfix-missing-pkg==1.0"), ("os", "os")]
    assert namespace["missing"](fake) == [("sdfix_missing_pkg", "sdfix-missing-pkg==1.0")]


def test_preload_flags():
    namespace = {}
    exec((ROOT / "preload.py").read_text(), namespace)
    parser = argparse.ArgumentParser()
    namespace["preload"](parser)
    args = parser.parse_args(["--sdfix-disable", "--sdfix-vae-dtype", "auto"])
    assert args.sdfix_disable is True and args.sdfix_vae_dtype == "auto"
    assert parser.parse_args(["--sdfix-decode-dtype", "fp32"]).sdfix_vae_dtype == "fp32"  # its older name
    assert parser.parse_args([]).sdfix_vae_dtype is None


def test_importing_the_package_is_light():
    code = ("import sys, lib_sdfix, lib_sdfix.settings; "
            "print(sorted(m for m in ('torch','skimage','diffusers','scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_diffusers_front_imports_nothing_heavy_until_used():
    heavy = ("torch", "diffusers", "transformers", "accelerate", "spandrel", "realesrgan", "basicsr", "torchvision", "scipy")
    code = ("import sys, lib_sdfix.diffusers, lib_sdfix.cli.ab_command, lib_sdfix.cli.ab_run, "
            "lib_sdfix.cli.ab_report, lib_sdfix.cli.diagnose_command, lib_sdfix.cli.diagnose_run, "
            "lib_sdfix.diffusers.refine, lib_sdfix.refine, lib_sdfix.cli.__main__, lib_sdfix.__main__; "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_standalone_check_passes():
    proc = subprocess.run([sys.executable, "-m", "lib_sdfix", "check"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout and "[FAIL]" not in proc.stdout
