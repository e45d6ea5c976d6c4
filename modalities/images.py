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
import threading

import numpy as np
from PIL import Image, UnidentifiedImageError

from omnid.models.base import ImageSegment, InputError, OverLimit

#: Largest decoded image the daemon accepts (a 100-megapixel photo is fine, a decompression bomb is not).
MAX_PIXELS = 100_000_000
MAX_ENCODED_BYTES = 64 * 1024 * 1024
#: The formats proto/omnid.proto lists for Image (Pillow's names), and nothing else.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")

# Pillow's own bomb guard (a warning above MAX_IMAGE_PIXELS, 89.5 MP by default, an error above twice that)
# is set to the documented limit, so every image Pillow opens in this process (PDF scans included) is held to
# the same number the clients are told; decode_image refuses above it with its own message.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
#: Images above this many pixels are decoded one at a time: each may take up to 4 bytes a pixel while decoded
#: (400 MB at the limit), and eight decoded at once from eight small PNGs would be 3 GB.
LARGE_PIXELS = 16_000_000
_large_decodes = threading.Lock()
#: Bytes of RGB rows converted at a time when a large image is reduced.
BAND_BYTES = 4 << 20


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
            raise OverLimit(f"the image is {width}x{height}; the limit is {MAX_PIXELS} pixels")
        if width * height <= LARGE_PIXELS:
            image.load()
            return image_segment(image, max_side)
        with _large_decodes:
            image.draft("RGB", (2 * max_side, 2 * max_side))  # JPEG: libjpeg decodes at a fraction of the size
            image.load()
            return image_segment(image, max_side)
    except InputError:
        raise
    except Image.DecompressionBombError:  # over twice the limit: Pillow refuses before we see the size
        raise OverLimit(f"the image has over {2 * MAX_PIXELS} pixels; the limit is {MAX_PIXELS} pixels") from None
    except UnidentifiedImageError:
        raise InputError("the image is not in a format the daemon decodes (PNG, JPEG, WebP, BMP, GIF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"the image could not be decoded: {exc}") from None


def image_segment(image: Image.Image, max_side: int) -> ImageSegment:
    """Convert a PIL image to RGB and downscale it to max_side (keeping the aspect ratio).

    An image much larger than max_side is first reduced band by band, so no full-size RGB copy is ever made: a
    9400x9400 bilevel PNG of 258 KB took 709 MB."""
    if image.width < 1 or image.height < 1:
        raise InputError("the image has no pixels")
    rgb = _reduced(image, max_side).convert("RGB")
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return ImageSegment(np.asarray(rgb, dtype=np.uint8).copy())


def _reduced(image: Image.Image, max_side: int) -> Image.Image:
    """The image shrunk by an integer factor to at least twice max_side (a box filter), or as it is when it is
    not that large; the final resize to max_side is left to the caller's filter.

    Strip by strip: each band of rows is converted to RGB and reduced on its own, so beside the decoded image
    only one band and the reduced result exist (the result is the same as reducing the whole)."""
    factor = max(image.size) // (2 * max_side)
    if factor < 2:
        return image
    width, height = image.size
    reduced = Image.new("RGB", (-(-width // factor), -(-height // factor)))
    step = factor * max(1, BAND_BYTES // (3 * width * factor))  # whole groups of `factor` rows, ~BAND_BYTES
    for top in range(0, height, step):
        band = image.crop((0, top, width, min(height, top + step))).convert("RGB")
        reduced.paste(band.reduce(factor), (0, top // factor))
    return reduced
