from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from signwatch.imaging import ImageError, decode_image
from tests.unit.helpers import png_bytes


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 10, 10)).save(buf, "JPEG")
    return buf.getvalue()


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_png_jpeg_and_npy_decode_to_rgb_uint8():
    assert decode_image(png_bytes(size=16), "image/png").shape == (16, 16, 3)
    jpg = decode_image(_jpeg(), "image/jpeg")
    assert jpg.shape == (10, 20, 3) and jpg[..., 0].mean() > 150
    arr = np.random.default_rng(0).integers(0, 255, (8, 9, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(_npy(arr), "application/x-npy"), arr)
    chw = np.random.default_rng(1).random((3, 5, 6)).astype(np.float32)
    assert decode_image(_npy(chw), "application/x-npy").shape == (5, 6, 3)
    assert decode_image(png_bytes(size=4), "application/octet-stream").shape == (4, 4, 3)


@pytest.mark.parametrize("body, ctype, status", [
    (b"", "image/png", 400),
    (b"hello world", "image/png", 400),
    (b"hello world", "text/plain", 415),
    (png_bytes()[:200], "image/png", 400),  # truncated
    (png_bytes(), "image/jpeg", 400),  # lies about its type
    (_npy(np.zeros((2, 2, 7))), "application/x-npy", 400),
    (_npy(np.full((4, 4, 3), 3.0)), "application/x-npy", 400),  # floats outside [0, 1]
    (_npy(np.zeros((5000, 2, 3), dtype=np.uint8)), "application/x-npy", 413),
])
def test_bad_inputs_raise_image_error_with_status(body, ctype, status):
    with pytest.raises(ImageError) as err:
        decode_image(body, ctype)
    assert err.value.status == status


def test_pickled_npy_is_refused():
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageError):
        decode_image(buf.getvalue(), "application/x-npy")


def test_oversized_png_is_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("RGB", (3000, 10)).save(buf, "PNG")
    with pytest.raises(ImageError) as err:
        decode_image(buf.getvalue(), "image/png", max_side=1024)
    assert err.value.status == 413
