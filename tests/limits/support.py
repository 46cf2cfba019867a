"""What the limits tests share: a cheap valid payload, and the check that one is accepted or refused."""
import base64
import io

import pytest
from PIL import Image

from lib_sdfix.limits.txt2img import check_txt2img_payload
from lib_sdfix.settings import SettingsError

CHEAP = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "seed": 1}


def refused(payload, field=None):
    """The problems of a payload that must be refused; ``field`` (after "payload.") must be named."""
    with pytest.raises(SettingsError) as err:
        check_txt2img_payload(payload)
    if field is not None:
        assert f"payload.{field}" in err.value.problems, err.value.problems
    return err.value.problems


def accepted(payload):
    return check_txt2img_payload(payload)


def png_bytes(width, height, mode="RGB"):
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data):
    return base64.b64encode(data).decode("ascii")
