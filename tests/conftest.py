"""Make the repository root importable (the WebUI imports SDFix the same way: root on sys.path), and the
fixtures tests in several folders share."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def photo():
    """A real photograph, not noise: scikit-image's astronaut, 128x128 of face and hair."""
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.astronaut()).crop((160, 40, 288, 168))
