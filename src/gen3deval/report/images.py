"""Pictures embedded in ``report.html`` so the page works when copied alone.

Each picture (a reference image or a render) is decoded once and embedded twice as a ``data:`` URI: a
thumbnail (longest side ``THUMB_SIZE`` = 160 px) shown in the tables, and an enlargement (longest side
``FULL_SIZE`` = 512 px, the renderer's default size, so renders are embedded at full size) shown by the
page's "click to enlarge" viewer. Both are WebP (JPEG where Pillow lacks WebP), composited over white.

Sizes measured on the quickstart renders (512 x 512 RGBA PNG): ~1 kB a thumbnail and ~4 kB an enlargement
(WebP quality 80), so a 304-case x 4-system run (1,520 pictures) adds ~10 MB of base64 to the page.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

THUMB_SIZE = 160
FULL_SIZE = 512
QUALITY = 80


def _format() -> tuple[str, str]:
    from PIL import features

    return ("WEBP", "image/webp") if features.check("webp") else ("JPEG", "image/jpeg")


def _encode(im: object, fmt: tuple[str, str], quality: int) -> str:
    buf = io.BytesIO()
    im.save(buf, fmt[0], quality=quality)  # type: ignore[attr-defined]
    return f"data:{fmt[1]};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def embed_image(
    path: Path, thumb: int = THUMB_SIZE, full: int = FULL_SIZE, quality: int = QUALITY
) -> tuple[str, str] | None:
    """(thumbnail URI, enlargement URI) of the image at ``path``, or None if it cannot be read."""
    from PIL import Image

    fmt = _format()
    try:
        with Image.open(path) as im:
            im.draft("RGB", (full, full))  # JPEG: decode at reduced scale, much faster for photos
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            big = im.convert("RGBA" if has_alpha else "RGB")
        # Downscale first (Pillow resamples RGBA with premultiplied alpha), then composite the pixels left.
        big.thumbnail((full, full), Image.Resampling.BICUBIC, reducing_gap=1.0)
        if has_alpha:
            big = Image.alpha_composite(Image.new("RGBA", big.size, (255, 255, 255, 255)), big)
        big = big.convert("RGB")
        small = big.copy()
        small.thumbnail((thumb, thumb), Image.Resampling.BICUBIC, reducing_gap=1.0)
        return _encode(small, fmt, quality), _encode(big, fmt, quality)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def thumbnail_data_uri(path: Path, size: int = THUMB_SIZE) -> str | None:
    """The thumbnail ``data:`` URI alone (longest side ``size``), or None if unreadable."""
    pair = embed_image(path, thumb=size, full=max(size, 1))
    return pair[0] if pair else None


def embed_images(
    paths: Sequence[Path], thumb: int = THUMB_SIZE, full: int = FULL_SIZE, workers: int | None = None
) -> dict[Path, tuple[str, str] | None]:
    """:func:`embed_image` of every existing file, in a thread pool (Pillow releases the GIL while coding)."""
    todo = sorted({p for p in paths if p.is_file()})
    n = workers or min(4, os.cpu_count() or 1)
    if n <= 1 or len(todo) < 8:
        return {p: embed_image(p, thumb, full) for p in todo}
    with ThreadPoolExecutor(max_workers=n) as pool:
        return dict(zip(todo, pool.map(lambda p: embed_image(p, thumb, full), todo), strict=True))
