"""Thumbnails with Pillow: the demo's CPU-bound work, and an example of a class-based processor.

Run it yourself:  xq run xq.examples.thumbs:app --queues demo
"""

from __future__ import annotations

import io

import xq

app = xq.App("thumbs", default_queue="demo")


@app.task("image.thumbnail", queue="demo")
class Thumbnail(xq.Processor):
    """JPEG/PNG bytes in, a JPEG thumbnail of at most 128x128 out."""

    size = (128, 128)

    def setup(self) -> None:
        from PIL import Image  # imported once per child, on first use

        self.Image = Image

    def process(self, payload: bytes) -> bytes:
        im = self.Image.open(io.BytesIO(payload))
        im.draft("RGB", (self.size[0] * 2, self.size[1] * 2))  # JPEG: decode at reduced scale when it can
        im = im.convert("RGB")
        im.thumbnail(self.size)
        out = io.BytesIO()
        im.save(out, "JPEG", quality=85)
        return out.getvalue()


def make_images(n: int, size=(640, 480), seed: int = 7) -> list[bytes]:
    """n distinct JPEG images (gradients and shapes) generated with Pillow."""
    import random

    from PIL import Image, ImageDraw

    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        im = Image.linear_gradient("L").resize(size).convert("RGB")
        draw = ImageDraw.Draw(im)
        for _ in range(12):
            x, y = rnd.randrange(size[0]), rnd.randrange(size[1])
            r = rnd.randrange(10, 120)
            draw.ellipse((x - r, y - r, x + r, y + r),
                         fill=(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out
