"""Decoding client images into what a vision encoder takes, safely.

Images come from clients as encoded bytes. Pillow decodes them here, in the daemon's Python, so a corrupt or
hostile file raises a clear InputError instead of reaching the C library; a decompression bomb is refused by
its pixel count before decoding; anything larger than the encoder takes is downscaled once, here, so every
backend sees the same pixels (and the prompt cache sees the same digest).

Only the formats the proto promises are tried: Pillow knows dozens, and some hand the file to other programs
(EPS goes to Ghostscript) or to rarely exercised decoders, which is more than a client's bytes should reach.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from omnid.models.base import ImageSegment, InputError

#: Largest decoded image the daemon accepts (a 100-megapixel photo is fine, a decompression bomb is not).
MAX_PIXELS = 100_000_000
MAX_ENCODED_BYTES = 64 * 1024 * 1024
#: The formats proto/omnid.proto lists for Image (Pillow's names), and nothing else.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")

# Pillow's own bomb guard (a warning above MAX_IMAGE_PIXELS, 89.5 MP by default, an error above twice that)
# is set to the documented limit, so every image Pillow opens in this process (PDF scans included) is held to
# the same number the clients are told; decode_image refuses above it with its own message.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def decode_image(data: bytes, max_side: int) -> ImageSegment:
    """Decode PNG/JPEG/WebP/BMP/GIF bytes to an RGB ImageSegment no larger than max_side on its long side."""
    if not data:
        raise InputError("the image is empty")
    if len(data) > MAX_ENCODED_BYTES:
        raise InputError(f"the image is {len(data)} bytes; the limit is {MAX_ENCODED_BYTES}")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise InputError(f"the image is {width}x{height}; the limit is {MAX_PIXELS} pixels")
        image.load()
    except InputError:
        raise
    except Image.DecompressionBombError:  # over twice the limit: Pillow refuses before we see the size
        raise InputError(f"the image has over {2 * MAX_PIXELS} pixels; the limit is {MAX_PIXELS} pixels") from None
    except UnidentifiedImageError:
        raise InputError("the image is not in a format the daemon decodes (PNG, JPEG, WebP, BMP, GIF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
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
