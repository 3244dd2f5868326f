"""Decoding and validating request images: PNG, JPEG, or a NumPy ``.npy`` array.

Everything a client sends is untrusted: sizes are capped before decoding (decompression bombs),
``.npy`` files are read with ``allow_pickle=False`` and every failure is an ``ImageError`` that
the HTTP layer turns into a 4xx JSON answer.
"""

from __future__ import annotations

import io

import imagehash
import numpy as np
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
NPY_MAGIC = b"\x93NUMPY"

CONTENT_TYPES = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "application/x-npy": "npy",
    "application/npy": "npy",
    "application/octet-stream": None,  # sniffed from the magic bytes
}


class ImageError(ValueError):
    """The body is not an image we accept. ``status`` is the HTTP status to answer with;
    ``reason`` the same for protocols that are not HTTP (the serving core speaks in reasons)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    @property
    def reason(self) -> str:
        return {408: "body_timeout", 413: "payload_too_large", 415: "unsupported_media_type"}.get(
            self.status, "bad_image")


def sniff(data: bytes) -> str | None:
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(NPY_MAGIC):
        return "npy"
    return None


# A traffic-sign classifier looks at 64x64 crops (GTSRB's largest are 250x250): one megapixel is
# generous, and bounds a decoded RGBA image at 4 MiB, however small the compressed body (a 2 KB PNG
# can claim 4096x4096 = 64 MiB). The header is read before any pixel is decoded.
MAX_PIXELS = 1024 * 1024
MAX_BATCH_IMAGES = 64


def decode_image(data: bytes, content_type: str | None, max_side: int = 4096,
                 max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Return the image as an RGB ``uint8`` array (H, W, 3)."""
    images = decode_images(data, content_type, max_side, max_pixels, max_batch=1)
    return images[0]


def decode_images(data: bytes, content_type: str | None, max_side: int = 4096,
                  max_pixels: int = MAX_PIXELS, max_batch: int = MAX_BATCH_IMAGES) -> list[np.ndarray]:
    """One RGB ``uint8`` array (H, W, 3) per image: a PNG or JPEG is one image; a ``.npy`` array of
    shape (N, H, W, 3) is a batch of N (``max_batch`` at most)."""
    return decode_request(data, content_type, max_side, max_pixels, max_batch)[0]


def decode_request(data: bytes, content_type: str | None, max_side: int = 4096,
                   max_pixels: int = MAX_PIXELS, max_batch: int = MAX_BATCH_IMAGES
                   ) -> tuple[list[np.ndarray], bool]:
    """The images, and whether the body was a batch (a 4-D ``.npy``) rather than one image."""
    return decode_checked(data, check_request(data, content_type), max_side, max_pixels, max_batch)


def check_request(data: bytes, content_type: str | None) -> str:
    """What the body is (``png``, ``jpeg`` or ``npy``), from its declared type and magic bytes
    only: cheap enough for an event loop. Raises ImageError (400, 415) without decoding."""
    if not data:
        raise ImageError("empty body: send a PNG, JPEG or .npy image")
    ctype = (content_type or "application/octet-stream").split(";")[0].strip().lower()
    if ctype not in CONTENT_TYPES:
        raise ImageError(
            f"unsupported content type {ctype!r}; use one of "
            + ", ".join(sorted(c for c in CONTENT_TYPES if c != "application/octet-stream")),
            status=415,
        )
    declared = CONTENT_TYPES[ctype]
    kind = sniff(data)
    if kind is None:
        raise ImageError(f"body is not a PNG, JPEG or .npy file (content type {ctype})")
    if declared is not None and declared != kind:
        raise ImageError(f"content type says {declared} but the body is {kind}")
    return kind


def check_size(width: int, height: int, max_side: int, max_pixels: int) -> None:
    """Refuse an image by its dimensions, before its pixels are decoded or copied: empty (400),
    over ``max_side`` a side or ``max_pixels`` in all (413). Every image path asks this one."""
    if width < 1 or height < 1:
        raise ImageError(f"image is {width}x{height}: empty")
    if width > max_side or height > max_side:
        raise ImageError(f"image is {width}x{height}; the limit is {max_side} px a side", 413)
    if width * height > max_pixels:
        raise ImageError(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}", 413)


def decode_checked(data: bytes, kind: str, max_side: int = 4096, max_pixels: int = MAX_PIXELS,
                   max_batch: int = MAX_BATCH_IMAGES) -> tuple[list[np.ndarray], bool]:
    """Decode a body ``check_request`` classified as ``kind``: the CPU-heavy part."""
    if kind == "npy":
        return _decode_npy(data, max_side, max_pixels, max_batch)
    return [_decode_pil(data, max_side, max_pixels)], False


def _decode_pil(data: bytes, max_side: int, max_pixels: int) -> np.ndarray:
    # The size checks below come before any pixel is decoded, and are far stricter than PIL's
    # decompression-bomb warning (89 megapixels), so no warnings filter is needed: it would be
    # process-wide state, and decodes run in several threads at once.
    try:
        with Image.open(io.BytesIO(data)) as probe:
            check_size(*probe.size, max_side, max_pixels)
            probe.verify()  # checks the structure (CRC, truncation) without decoding pixels
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {exc}", 413) from exc
    except Exception as exc:  # PIL raises many types for corrupt files
        raise ImageError(f"corrupt or truncated image: {exc}") from exc


def _decode_npy(data: bytes, max_side: int, max_pixels: int, max_batch: int) -> tuple[list[np.ndarray], bool]:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise ImageError(f"corrupt .npy file: {exc}") from exc
    if arr.ndim == 4:
        if not 1 <= arr.shape[0] <= max_batch:
            raise ImageError(f"a batch holds 1 to {max_batch} images; got {arr.shape[0]}",
                             413 if arr.shape[0] > max_batch else 400)
        if arr.shape[-1] != 3:
            raise ImageError(f"a batch must be (N, H, W, 3); got {arr.shape}")
        return [_npy_image(image, max_side, max_pixels) for image in arr], True
    return [_npy_image(arr, max_side, max_pixels)], False


def _npy_image(arr: np.ndarray, max_side: int, max_pixels: int) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ImageError(f".npy array must be (H, W), (H, W, 3) or (3, H, W); got {arr.shape}")
    check_size(arr.shape[1], arr.shape[0], max_side, max_pixels)
    if arr.dtype == np.uint8:
        out = arr
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ImageError("float arrays must hold finite values in [0, 1]")
        out = np.round(arr * 255).astype(np.uint8)
    else:
        raise ImageError(f"array dtype must be uint8 or float, got {arr.dtype}")
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


# Images larger than this a side are box-reduced (by a whole factor) to about it before hashing:
# the hash looks at a 32x32 thumbnail anyway, and a 224-pixel image then costs half as much.
HASH_SIDE = 64


def perceptual_hash(image: np.ndarray) -> str:
    """The decoded image's 64-bit perceptual hash as 16 hex digits: ``imagehash.phash`` (BSD), the
    signs of the 8x8 lowest frequencies of the DCT of a 32x32 grey thumbnail against their median.
    Frames of one sign as a passing car sends them stay within a few bits of the frames before
    them, images of different signs lie far apart (docs/monitoring.md, "Correlated frames"): the
    monitor counts near-duplicates as one observation (``monitoring.tracks``). Measured on the
    2-core CPU: 141 us for a 64x64 image (its PNG decode: 233 us), 239 us at 224x224 (1,563 us)."""
    picture = Image.fromarray(image).convert("L")
    factor = min(picture.size) // HASH_SIDE
    if factor > 1:
        picture = picture.reduce(factor)
    return str(imagehash.phash(picture))


def encode_npy(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, image, allow_pickle=False)
    return buf.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
