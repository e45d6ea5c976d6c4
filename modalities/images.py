"""Decoding client images into what a vision encoder takes, safely.

Images come from clients as encoded bytes. Pillow decodes them here, in the daemon's Python, so a corrupt or
hostile file raises a clear InputError instead of reaching the C library; a decompression bomb is refused by
its pixel count before decoding; anything larger than the encoder takes is downscaled once, here, so every
backend sees the same pixels (and the prompt cache sees the same digest).
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from omnid.models.base import ImageSegment, InputError

#: Largest decoded image the daemon accepts (a 100-megapixel photo is fine, a decompression bomb is not).
MAX_PIXELS = 100_000_000
MAX_ENCODED_BYTES = 64 * 1024 * 1024


def decode_image(data: bytes, max_side: int) -> ImageSegment:
    """Decode PNG/JPEG/WebP/BMP/GIF bytes to an RGB ImageSegment no larger than max_side on its long side."""
    if not data:
        raise InputError("the image is empty")
    if len(data) > MAX_ENCODED_BYTES:
        raise InputError(f"the image is {len(data)} bytes; the limit is {MAX_ENCODED_BYTES}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InputError(f"the image is {width}x{height}; the limit is {MAX_PIXELS} pixels")
            image.load()
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError("the image is not in a format the daemon decodes (PNG, JPEG, WebP, BMP, GIF, TIFF)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise InputError(f"the image could not be decoded: {exc}") from None
    return image_segment(image, max_side)


def image_segment(image: Image.Image, max_side: int) -> ImageSegment:
    """Convert a PIL image to RGB and downscale it to max_side (keeping the aspect ratio)."""
    if image.width < 1 or image.height < 1:
        raise InputError("the image has no pixels")
    rgb = image.convert("RGB")
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return ImageSegment(np.asarray(rgb, dtype=np.uint8).copy())
