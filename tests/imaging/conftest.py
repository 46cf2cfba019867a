"""Shared fixtures of the imaging tests: a real photograph (scikit-image's astronaut), not noise."""
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    return Image.fromarray(data.astronaut()).crop((160, 40, 288, 168))  # 128x128: face and hair
