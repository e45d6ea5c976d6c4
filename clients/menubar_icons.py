"""The tray icon's pictures, drawn with Pillow from an IconLook (nothing is fetched or read from disk).

A round face: grey and hollow when the daemon is not running, teal when it is (paler while the model is not
loaded); an amber ring while something works; a red dot (a recording meeting; grey when paused) at the lower
right; an eye at the top when the screen watcher is on. Drawn large and scaled down by the tray, so the
marks stay legible at 22-24 pixels.
"""
from __future__ import annotations

from functools import lru_cache

from PIL import Image, ImageDraw

from omnid.clients.menubar_state import IconLook

SIZE = 64
GREY = (140, 140, 140, 255)
TEAL = (0, 150, 136, 255)
PALE_TEAL = (128, 203, 196, 255)
AMBER = (255, 179, 0, 255)
RED = (229, 57, 53, 255)
WHITE = (255, 255, 255, 255)
DARK = (33, 33, 33, 255)


@lru_cache(maxsize=64)
def draw(look: IconLook) -> Image.Image:
    """The icon for a look (cached: a look is a handful of booleans)."""
    image = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    pen = ImageDraw.Draw(image)
    if look.working:
        pen.ellipse((1, 1, SIZE - 2, SIZE - 2), outline=AMBER, width=6)
    face = (8, 8, SIZE - 9, SIZE - 9)
    if not look.running:
        pen.ellipse(face, outline=GREY, width=6)
        return image
    pen.ellipse(face, fill=TEAL if look.loaded else PALE_TEAL)
    if look.watching:  # an eye across the face
        pen.ellipse((16, 22, SIZE - 17, SIZE - 23), fill=WHITE)
        pen.ellipse((26, 25, SIZE - 27, SIZE - 26), fill=DARK)
    if look.recording or look.paused_recording:
        pen.ellipse((SIZE - 26, SIZE - 26, SIZE - 1, SIZE - 1), fill=RED if look.recording else GREY,
                    outline=WHITE, width=3)
    return image
