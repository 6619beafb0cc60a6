"""Image processors (Pillow): thumbnail, resize, convert, and a chain of these steps as one task.

Every task runs a list of steps on one image: auto-orient by EXIF (unless "orient": false), the steps, then
encode in the output format.  docs/protocol.md, "Built-in media processors", has the payload schemas.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

from .common import (MediaError, check_dest, check_int, check_keys, options, read_source, require,
                     split_bytes_payload, write_dest)

WEBP_MAX_SIDE = 16383  # libwebp's limit

FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "AVIF": "image/avif"}
_FEATURE = {"JPEG": "jpg", "PNG": "zlib", "WEBP": "webp", "AVIF": "avif"}
DEFAULT_THUMBNAIL = (256, 256)
MAX_SIDE = 65500   # pixels: the largest side an output may ask for (JPEG's and WebP's own limits are close)
OUTPUT_KEYS = ("format", "quality", "metadata", "orient", "max_pixels")
STEP_KEYS = {"thumbnail": ("size",), "resize": ("width", "height", "mode"), "convert": ("format", "quality")}
_METADATA_KEYS = ("exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "photoshop", "comment", "dpi", "adobe",
                  "adobe_transform", "jfif", "jfif_version", "jfif_density", "jfif_unit")


def available_formats() -> list[str]:
    """Output formats this worker's Pillow can write (AVIF only where the build has it)."""
    features = require("PIL.features", "images")
    return [f for f, feat in _FEATURE.items() if features.check(feat)]


def _format(value, what: str) -> str | None:
    if value is None:
        return None
    name = value.upper() if isinstance(value, str) else None
    name = {"JPG": "JPEG"}.get(name, name)
    if name not in FORMATS:
        raise MediaError(f"{what}: invalid format {value!r}: expected one of jpeg, png, webp, avif")
    if name not in available_formats():
        raise MediaError(f"{what}: format {name} is not supported by this worker's Pillow build")
    return name


def _size(value, what: str) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE for v in value)):
        raise MediaError(f"{what}: invalid size {value!r}: expected [width, height], integers 1..{MAX_SIDE}")
    return value[0], value[1]


def parse_steps(steps: Any, what: str, numbered: bool = True) -> list[dict]:
    """Checked steps: [{"op": "thumbnail"|"resize"|"convert", ...}], each op's options validated; errors name
    the step ("step 2") when numbered (a chain's steps), else the task alone."""
    if not isinstance(steps, list) or not steps or len(steps) > 32:
        raise MediaError(f"{what}: invalid steps {steps!r}: expected a list of 1..32 steps such as "
                         f'{{"op": "resize", "width": 800}}')
    out = []
    for i, step in enumerate(steps):
        w = f"{what}, step {i}" if numbered else what
        if not isinstance(step, dict) or not isinstance(step.get("op"), str) or step["op"] not in STEP_KEYS:
            raise MediaError(f"{w}: invalid step {step!r}: expected an object with op "
                             f"{', '.join(STEP_KEYS)}")
        op = step["op"]
        opts = {k: v for k, v in step.items() if k != "op"}
        check_keys(opts, STEP_KEYS[op], f"{w} ({op})" if numbered else w)
        if op == "thumbnail":
            out.append({"op": op, "size": _size(opts.get("size", list(DEFAULT_THUMBNAIL)), w)})
        elif op == "resize":
            mode = opts.get("mode", "fit")
            if mode not in ("fit", "fill", "exact"):
                raise MediaError(f"{w}: invalid mode {mode!r}: expected fit, fill or exact")
            width = check_int(opts, "width", w, hi=MAX_SIDE)
            height = check_int(opts, "height", w, hi=MAX_SIDE)
            if width is None and height is None or mode != "fit" and (width is None or height is None):
                raise MediaError(f"{w}: resize mode {mode} needs " +
                                 ("width and height" if mode != "fit" else "width or height (or both)"))
            out.append({"op": op, "mode": mode, "width": width, "height": height})
        else:
            out.append({"op": op, "format": _format(opts.get("format"), w),
                        "quality": check_int(opts, "quality", w, lo=1, hi=100)})
    return out


def _open(data: bytes, max_pixels: int):
    """The decoded image, or MediaError for what is not an image, too large, or truncated."""
    Image = require("PIL.Image", "images")
    with warnings.catch_warnings():
        # The explicit check below replaces Pillow's warning; its DecompressionBombError (2x its limit) stays.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except Image.UnidentifiedImageError:
            raise MediaError(f"not an image, or a format this worker's Pillow cannot read "
                             f"({len(data)} bytes starting {data[:8]!r})") from None
        except Image.DecompressionBombError as e:
            raise MediaError(f"image rejected as a decompression bomb: {e}") from None
        except (OSError, SyntaxError, ValueError) as e:  # a header cut short or broken
            raise MediaError(f"cannot decode the image ({len(data)} bytes): {e}") from None
    if im.width * im.height > max_pixels:
        raise MediaError(f"image of {im.width}x{im.height} = {im.width * im.height} pixels is over the limit of "
                         f"{max_pixels} pixels (max_pixels)")
    return im


def _load(im) -> None:
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's "image file is truncated", broken chunks
        raise MediaError(f"cannot decode the {im.format} image ({im.width}x{im.height}): {e}") from None


def _target(im, step: dict) -> tuple[int, int]:
    """The output size of a resize step on im."""
    w, h = step["width"], step["height"]
    if step["mode"] != "fit":
        return w, h
    scale = min(w / im.width if w else float("inf"), h / im.height if h else float("inf"))
    return max(1, round(im.width * scale)), max(1, round(im.height * scale))


def process(data: bytes, steps: list[dict], *, fmt: str | None = None, quality: int | None = None,
            metadata: str = "strip", orient: bool = True, max_pixels: int | None = None) -> tuple:
    """Run steps on the encoded image data; returns (encoded output, width, height, output format).

    fmt: output format (default: the source's when writable, else PNG; a convert step overrides);
    metadata: "strip" (default) or "keep" (EXIF with orientation reset, ICC profile; an EXIF block Pillow
    cannot read is dropped, as is an orientation it cannot apply); max_pixels: the limit on decoded and
    output pixels (default PIL.Image.MAX_IMAGE_PIXELS).  Decoding, the steps and encoding work on these bytes
    alone, so whatever fails here fails the same way on every attempt: MediaError."""
    try:
        return _process(data, steps, fmt, quality, metadata, orient, max_pixels)
    except (MediaError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, ValueError, SyntaxError, struct.error...
        raise MediaError(f"cannot process the image: {type(e).__name__}: {e}") from None


def _process(data, steps, fmt, quality, metadata, orient, max_pixels) -> tuple:
    Image = require("PIL.Image", "images")
    ImageOps = require("PIL.ImageOps", "images")
    limit = max_pixels or Image.MAX_IMAGE_PIXELS
    im = _open(data, limit)
    src_format = im.format
    first = steps[0] if steps else None
    if first is not None and first["op"] == "thumbnail" and im.format == "JPEG":
        side = 2 * max(first["size"])  # decode at reduced scale when it can; sides may swap on orientation
        im.draft("RGB" if im.mode not in ("L", "RGB") else im.mode, (side, side))
    _load(im)
    exif = _exif(im) if metadata == "keep" else None
    icc = im.info.get("icc_profile") if metadata == "keep" else None
    if orient:
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - an orientation tag of the wrong type: the image stays as stored
            pass
        else:
            if exif is not None:
                exif = _exif(im)  # orientation tag removed by the transpose
    for step in steps:
        op = step["op"]
        if op == "thumbnail":
            im.thumbnail(step["size"], Image.Resampling.LANCZOS)
        elif op == "resize":
            tw, th = _target(im, step)
            if tw * th > limit:
                raise MediaError(f"resize to {tw}x{th} = {tw * th} pixels is over the limit of {limit} pixels "
                                 f"(max_pixels)")
            if step["mode"] == "fill":
                im = ImageOps.fit(im, (tw, th), Image.Resampling.LANCZOS)
            else:
                im = im.resize((tw, th), Image.Resampling.LANCZOS)
        else:
            fmt = step["format"] or fmt
            quality = step["quality"] or quality
    out_fmt = fmt or (src_format if src_format in FORMATS and src_format in available_formats() else "PNG")
    if out_fmt == "WEBP" and max(im.size) > WEBP_MAX_SIDE:
        raise MediaError(f"WebP images are at most {WEBP_MAX_SIDE} pixels a side; this one would be "
                         f"{im.width}x{im.height}")
    for k in _METADATA_KEYS:
        im.info.pop(k, None)
    im = _for_format(im, out_fmt)
    save: dict = {}
    if quality is not None and out_fmt != "PNG":
        save["quality"] = quality
    elif out_fmt == "JPEG":
        save["quality"] = 85
    if exif is not None and len(exif):
        try:
            save["exif"] = exif.tobytes()
        except Exception:  # noqa: BLE001 - a tag Pillow read but cannot write back: dropped, like unreadable EXIF
            pass
    if icc:
        save["icc_profile"] = icc
    buf = io.BytesIO()
    im.save(buf, out_fmt, **save)
    return buf.getvalue(), im.width, im.height, out_fmt


def _exif(im):
    """im's EXIF, or None where Pillow cannot read it (a broken block is dropped, not kept)."""
    try:
        exif = im.getexif()
        exif.tobytes()  # a tag that cannot be written back shows here, not at save time
        return exif
    except Exception:  # noqa: BLE001 - Pillow raises SyntaxError, struct.error, TypeError... on bad EXIF
        return None


# modes each output format writes as they are; any other is converted first (_for_format)
_WRITES = {"JPEG": ("L", "RGB", "CMYK"), "PNG": ("1", "L", "LA", "I;16", "P", "RGB", "RGBA"),
           "WEBP": ("RGB", "RGBA"), "AVIF": ("RGB", "RGBA")}


def _for_format(im, fmt: str):
    """im in a mode fmt can write: 16-bit and 32-bit pixels scaled to 8 bits (PNG keeps 16-bit grey),
    alpha kept where the format has it, everything else (CMYK, YCbCr, LAB, P, 1, ...) as RGB or L."""
    if im.mode in _WRITES[fmt]:
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        if fmt == "PNG" and im.mode != "F":
            lo, hi = im.getextrema()
            if lo >= 0 and hi <= 65535:
                return im.convert("I;16") if im.mode != "I;16" else im
        return _to_8bit(im)
    alpha = "A" in im.mode or "a" in im.mode or "transparency" in im.info
    if fmt == "JPEG":
        return im.convert("L" if im.mode in ("1", "LA", "La") else "RGB")
    if fmt == "PNG":
        return im.convert("RGBA" if alpha else "RGB")
    return im.convert("RGBA" if alpha else "RGB")


def _to_8bit(im):
    """Grey pixels of 16 or 32 bits (or floats) as 8-bit L: 16-bit values scaled by 1/256 (a dark image stays
    dark); wider integers and floats spread over 0..255 from their own min and max."""
    lo, hi = im.getextrema()
    if im.mode != "F" and 0 <= lo and hi <= 65535:
        scale, offset = 1 / 256, 0
    else:
        scale, offset = (255.0 / (hi - lo) if hi > lo else 0.0), lo
    f = im if im.mode == "F" else (im if im.mode == "I" else im.convert("I")).convert("F")
    return f.point(lambda v: (v - offset) * scale).convert("L")


def run(task: str, payload: Any, default_steps: list[dict] | None, step_keys: tuple = ()) -> Any:
    """One image task: payload -> (source, steps, output options) -> bytes, or a dest and a JSON summary.

    default_steps: the task's fixed step list built from its own options (None: the payload's "steps")."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        opts, data = split_bytes_payload(payload, task)
        src = None
    else:
        opts = options(payload, task)
        src, data = opts.get("src"), None
        if src is None:
            raise MediaError(f"{task}: the JSON payload needs src: {{\"path\": ...}} or {{\"url\": ...}}; "
                             f"or send the image itself as a bytes payload")
    keys = OUTPUT_KEYS + ("dest",) + (("src",) if data is None else ()) + \
        (step_keys if default_steps is not None else ("steps",))
    check_keys(opts, keys, task)
    if default_steps is None:
        steps = parse_steps(opts.get("steps"), task)
    else:
        steps = parse_steps([{"op": default_steps[0]["op"], **{k: opts[k] for k in step_keys if k in opts}}]
                            if step_keys else default_steps, task, numbered=False)
    metadata = opts.get("metadata", "strip")
    if metadata not in ("strip", "keep"):
        raise MediaError(f"{task}: invalid metadata {metadata!r}: expected strip or keep")
    orient = opts.get("orient", True)
    if not isinstance(orient, bool):
        raise MediaError(f"{task}: invalid orient {orient!r}: expected true or false")
    fmt = _format(opts.get("format"), task)
    quality = check_int(opts, "quality", task, lo=1, hi=100)
    max_pixels = check_int(opts, "max_pixels", task, hi=1 << 40)
    dest = check_dest(opts.get("dest"), task)
    if data is None:
        data = read_source(src, task)
    try:
        out, width, height, out_fmt = process(data, steps, fmt=fmt, quality=quality, metadata=metadata, orient=orient,
                          max_pixels=max_pixels)
    except MediaError as e:
        raise MediaError(f"{task}: {e}") from None
    if dest is None:
        return out
    written = write_dest(dest, out, FORMATS[out_fmt], task)
    return {"dest": written, "width": width, "height": height, "format": out_fmt, "bytes": len(out)}


def thumbnail(payload: Any) -> Any:
    """media.image.thumbnail: fit within size (default 256x256), never enlarged."""
    return run("media.image.thumbnail", payload, [{"op": "thumbnail"}], ("size",))


def resize(payload: Any) -> Any:
    """media.image.resize: width/height with mode fit (keep aspect, within the box), fill (crop to the box)
    or exact (stretch)."""
    return run("media.image.resize", payload, [{"op": "resize"}], ("width", "height", "mode"))


def convert(payload: Any) -> Any:
    """media.image.convert: re-encode as format (jpeg, png, webp, avif) at quality."""
    opts = payload if isinstance(payload, dict) else split_bytes_payload(payload, "media.image.convert")[0] \
        if isinstance(payload, (bytes, bytearray, memoryview)) else {"format": None}
    if opts.get("format") is None:
        raise MediaError("media.image.convert: the format option is required (jpeg, png, webp or avif)")
    return run("media.image.convert", payload, [{"op": "convert"}], ())


def chain(payload: Any) -> Any:
    """media.image.chain: "steps", a list of thumbnail/resize/convert steps, run on one decoded image."""
    return run("media.image.chain", payload, None)
