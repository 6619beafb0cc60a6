"""What the image and video processors share: payload checks, sources, destinations, the fetch/put hooks."""

from __future__ import annotations

import os
from typing import Any, Callable

import orjson

from ..errors import NonRetryable


class MediaError(NonRetryable):
    """Bad media (truncated, not an image, too many pixels, an unsupported codec) or a bad option: the task
    ends dead at once, since no retry can fix it.  The message names the problem."""


_hooks: dict[str, Callable | None] = {"fetch": None, "put": None}


def set_fetch(fn: Callable[[str], bytes] | None) -> None:
    """Set the hook reading a source {"url": ...}: fn(url) -> bytes (e.g. an object-store GET).  Call it at
    import time of the module `xq run` loads, so every child has it.  None removes it."""
    if fn is not None and not callable(fn):
        raise TypeError(f"set_fetch takes a function fn(url) -> bytes or None, got {fn!r}")
    _hooks["fetch"] = fn


def set_put(fn: Callable[[str, bytes, str], Any] | None) -> None:
    """Set the hook writing a destination {"url": ...}: fn(url, data, content_type), e.g. an object-store PUT.
    None removes it."""
    if fn is not None and not callable(fn):
        raise TypeError(f"set_put takes a function fn(url, data, content_type) or None, got {fn!r}")
    _hooks["put"] = fn


def require(module: str, extra: str):
    """Import an optional dependency, or fail the task saying which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MediaError(f"{module} is not installed in this worker ({e}): pip install 'xq-queue[{extra}]'") from None


def options(payload: Any, task: str) -> dict:
    """The JSON options of a task: a JSON object payload, else MediaError naming what came."""
    if not isinstance(payload, dict):
        raise MediaError(f"{task}: expected a JSON object payload, got {type(payload).__name__}")
    return payload


def split_bytes_payload(payload: bytes | memoryview, task: str) -> tuple[dict, bytes]:
    """A bytes payload: the media alone, or a one-line JSON object of options, b"\\n", then the media."""
    data = bytes(payload)
    if not data.startswith(b"{"):
        return {}, data
    end = data.find(b"\n")
    if end < 0:
        raise MediaError(f"{task}: a bytes payload starting with '{{' must be a one-line JSON object of options, "
                         f"a newline, then the media; no newline found")
    try:
        opts = orjson.loads(data[:end])
    except orjson.JSONDecodeError as e:
        raise MediaError(f"{task}: the options line of the bytes payload is not JSON ({e}); a bytes "
                         f"payload starting with '{{' is a one-line JSON object, a newline, then the media") from None
    if not isinstance(opts, dict):
        raise MediaError(f"{task}: the options line of the bytes payload must be a JSON object, got {opts!r}")
    if "src" in opts:
        raise MediaError(f"{task}: a bytes payload carries the media itself; 'src' is not allowed in its options")
    return opts, data[end + 1:]


def check_keys(opts: dict, allowed: tuple, what: str) -> None:
    unknown = sorted(k for k in opts if k not in allowed)
    if unknown:
        raise MediaError(f"{what}: unknown option {unknown[0]!r}; allowed are {', '.join(allowed)}")


def check_int(opts: dict, key: str, what: str, default=None, lo: int = 1, hi: int = 1 << 20):
    v = opts.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise MediaError(f"{what}: invalid {key} {v!r}: expected an integer {lo}..{hi}")
    return v


def check_number(opts: dict, key: str, what: str, default=None, lo: float = 0.0, hi: float = 1e9):
    v = opts.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise MediaError(f"{what}: invalid {key} {v!r}: expected a number {lo:g}..{hi:g}")
    return float(v)


def source_path(src: Any, what: str) -> str:
    """A {"path": ...} source (video travels by reference only)."""
    if not isinstance(src, dict) or set(src) != {"path"} or not isinstance(src["path"], str) or not src["path"]:
        raise MediaError(f"{what}: invalid src {src!r}: expected {{\"path\": \"/file\"}}")
    if not os.path.isfile(src["path"]):
        raise MediaError(f"{what}: source file {src['path']!r} does not exist or is not a file")
    return src["path"]


def read_source(src: Any, what: str) -> bytes:
    """The bytes a {"path": ...} or {"url": ...} source names (a URL through the set_fetch hook)."""
    if isinstance(src, dict) and set(src) == {"url"} and isinstance(src["url"], str) and src["url"]:
        fetch = _hooks["fetch"]
        if fetch is None:
            raise MediaError(f"{what}: src is a URL ({src['url']!r}) but no fetch hook is set in this worker: "
                             f"call xq.media.set_fetch(fn) in the module `xq run` loads")
        data = fetch(src["url"])
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MediaError(f"{what}: the fetch hook returned {type(data).__name__} for {src['url']!r}, "
                             f"expected bytes")
        return bytes(data)
    if isinstance(src, dict) and "url" in src:
        raise MediaError(f"{what}: invalid src {src!r}: expected {{\"url\": \"...\"}} alone")
    path = source_path(src, what)
    with open(path, "rb") as f:
        return f.read()


def check_dest(dest: Any, what: str, kinds: tuple = ("path", "url")) -> dict | None:
    if dest is None:
        return None
    if not (isinstance(dest, dict) and len(dest) == 1 and next(iter(dest)) in kinds
            and isinstance(next(iter(dest.values())), str) and next(iter(dest.values()))):
        forms = " or ".join(f'{{"{k}": "..."}}' for k in kinds)
        raise MediaError(f"{what}: invalid dest {dest!r}: expected {forms}")
    if "url" in dest and _hooks["put"] is None:
        raise MediaError(f"{what}: dest is a URL ({dest['url']!r}) but no put hook is set in this worker: "
                         f"call xq.media.set_put(fn) in the module `xq run` loads")
    return dest


def partial_path(path: str) -> str:
    """Where an output is written before it is renamed to path: the same directory, a name no reader takes
    for the finished file."""
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}.partial-{os.getpid()}")


def write_dest(dest: dict, data: bytes, content_type: str) -> str:
    """Write data to a {"path"} (atomically: a partial file renamed) or {"url"} (the put hook); the dest."""
    if "url" in dest:
        _hooks["put"](dest["url"], data, content_type)
        return dest["url"]
    path = dest["path"]
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        remove_quiet(tmp)
        raise
    return path


def remove_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
