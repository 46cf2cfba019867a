"""Run by the WebUI (with its own Python) at start: install only what SDFix needs and the WebUI lacks.

SDFix's WebUI side needs nothing beyond the WebUI's own packages (torch, numpy, Pillow,
scikit-image, gradio, fastapi).  It never installs or upgrades torch, gradio, numpy or anything
else the WebUI pins: changing those breaks the WebUI.  The optional diffusers front
(``lib_sdfix.diffusers``) is not used inside the WebUI, so it is not installed here either.
"""
from __future__ import annotations

# (import name, pip requirement) for packages SDFix needs inside the WebUI that the WebUI does not
# ship.  Empty today; anything added here must not be a package the WebUI pins.
REQUIREMENTS: list = []

# Never installed by SDFix (the WebUI's requirements_versions.txt pins them, or they are torch).
NEVER_INSTALL = frozenset({
    "torch", "torchvision", "xformers", "gradio", "numpy", "pillow", "scikit-image", "fastapi",
    "pydantic", "transformers", "accelerate", "safetensors", "spandrel", "open-clip-torch",
    "protobuf", "httpx", "httpcore",
})


def missing(requirements=REQUIREMENTS, is_installed=None):
    """The requirements whose import name is not installed."""
    if is_installed is None:
        import importlib.util

        def is_installed(name):
            return importlib.util.find_spec(name) is not None

    return [(name, spec) for name, spec in requirements if not is_installed(name)]


def main():
    import launch  # the WebUI's launcher module; only present when the WebUI runs this file

    for _name, spec in missing(is_installed=launch.is_installed):
        launch.run_pip(f"install {spec}", f"SDFix requirement: {spec}")


if __name__ == "__main__" or __name__ == "install" or __name__.startswith("extension_install"):
    try:
        import launch  # noqa: F401
    except ImportError:  # run outside the WebUI: nothing to do
        pass
    else:
        main()
