"""Write a random-weight TAESD decoder where the WebUI looks for it, for the cost-of-speed e2e test.

    cd WEBUI_DIR && VENV/bin/python /path/to/tests/e2e/make_taesd.py [sdxl]

The WebUI downloads ``models/VAE-taesd/taesd_decoder.pth`` (``taesdxl_decoder.pth`` for SDXL) at its first
TAESD decode; the test hosts have no network.  The architecture is the WebUI's own
(``modules.sd_vae_taesd.decoder``), its weights random (seed 0) like the test checkpoints: the images are
noise, the mechanics (a second, small decoder instead of the VAE) real.  Run from the WebUI's folder with
its Python; an existing file is left alone.  Forge and reForge keep the same ``decoder(latent_channels=4)``
for SD1.x and load the same file from their own ``models/VAE-taesd``: copy it there (their modules do not
import outside a launch).
"""
import os
import sys

import torch


def main() -> None:
    name = "taesdxl_decoder.pth" if "sdxl" in sys.argv[1:] else "taesd_decoder.pth"
    sys.path.insert(0, os.getcwd())
    sys.argv = sys.argv[:1] + ["--skip-torch-cuda-test"]  # the WebUI parses the command line at import
    from modules import paths_internal, sd_vae_taesd

    path = os.path.join(paths_internal.models_path, "VAE-taesd", name)
    if os.path.exists(path):
        print(f"{path}: already there")
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.manual_seed(0)
    # the legacy format: the WebUI's safe unpickler refuses the zip format's .format_version entry
    torch.save(sd_vae_taesd.decoder().state_dict(), path, _use_new_zipfile_serialization=False)
    print(f"{path}: random-weight TAESD decoder written")


if __name__ == "__main__":
    main()
