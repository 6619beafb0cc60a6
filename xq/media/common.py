"""What the image and video processors share: payload checks, sources, destinations, the fetch/put hooks."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import signal
import socket
import threading
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
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise file_error(e, path, what, "read") from None


def check_dest(dest: Any, what: str, kinds: tuple = ("path", "url")) -> dict | None:
    """A checked destination, before any work is done: a {"path"} must be a file name in an existing,
    writable directory (not a directory itself); a {"url"} needs the put hook."""
    if dest is None:
        return None
    if not (isinstance(dest, dict) and len(dest) == 1 and next(iter(dest)) in kinds
            and isinstance(next(iter(dest.values())), str) and next(iter(dest.values()))):
        forms = " or ".join(f'{{"{k}": "..."}}' for k in kinds)
        raise MediaError(f"{what}: invalid dest {dest!r}: expected {forms}")
    if "url" in dest and _hooks["put"] is None:
        raise MediaError(f"{what}: dest is a URL ({dest['url']!r}) but no put hook is set in this worker: "
                         f"call xq.media.set_put(fn) in the module `xq run` loads")
    if "path" in dest:
        path = dest["path"]
        if os.path.isdir(path):
            raise MediaError(f"{what}: dest {path!r} is a directory; expected a file name")
        check_dir(os.path.dirname(os.path.abspath(path)), f"{what}: dest {path!r}")
    return dest


def check_dir(d: str, what: str) -> None:
    """MediaError unless d is an existing directory this process may write into."""
    if not os.path.isdir(d):
        raise MediaError(f"{what}: directory {d!r} " + ("is not a directory" if os.path.exists(d) else
                                                         "does not exist"))
    if not os.access(d, os.W_OK | os.X_OK):
        raise MediaError(f"{what}: directory {d!r} is not writable by this worker (uid {os.getuid()})")


# errno values of a failed write that no retry fixes: the task ends dead naming the path
_FINAL_ERRNOS = frozenset(getattr(errno, n) for n in (
    "ENOENT", "ENOTDIR", "EISDIR", "EACCES", "EPERM", "EROFS", "ENAMETOOLONG", "EXDEV", "EINVAL", "ELOOP",
    "EFBIG") if hasattr(errno, n))


def file_error(e: OSError, path: str, what: str, verb: str = "write") -> Exception:
    """A failed read or write of path as the error to raise: MediaError (final) or an OSError naming path
    (retried: a full disk, an I/O error, a stale network mount may pass)."""
    why = e.strerror or str(e)
    if e.errno in _FINAL_ERRNOS:
        return MediaError(f"{what}: cannot {verb} {path!r}: {why}")
    return OSError(e.errno, f"{what}: cannot {verb} {path!r}: {why}")


_HOST = socket.gethostname().replace("/", "_")


def partial_path(path: str) -> str:
    """Where an output is written before it is renamed to path: the same directory, a name no reader takes
    for the finished file, naming this host and process (see sweep_partials)."""
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}.partial-{_HOST}-{os.getpid()}")


def sweep_partials(path: str) -> None:
    """Remove the partial outputs of path left by processes of this host that are gone (a child SIGKILLed
    past its timeout's grace, a machine that lost power): the next write of the same output cleans up.
    Partials of other hosts (a shared network directory) are never touched."""
    d, base = os.path.split(os.path.abspath(path))
    prefix = f".{base}.partial-{_HOST}-"
    try:
        names = [n for n in os.listdir(d) if n.startswith(prefix)]
    except OSError:
        return
    for n in names:
        pid = n[len(prefix):]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            remove_tree_quiet(os.path.join(d, n))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def removed_if_stopped(path: str):
    """While the body writes path (a partial file or directory): a SIGTERM (the supervisor ending a task past
    its timeout) removes it before the process ends as SIGTERM's default action would, and any exception
    (a cancel, bad media, a full disk) removes it too.  SIGKILL leaves it to sweep_partials."""
    installed, prev = False, None
    if threading.current_thread() is threading.main_thread():
        def on_term(signum, frame):
            remove_tree_quiet(path)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

        prev = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, on_term)
        installed = True
    try:
        yield
    except BaseException:
        remove_tree_quiet(path)
        raise
    finally:
        if installed:
            signal.signal(signal.SIGTERM, prev if prev is not None else signal.SIG_DFL)


def write_dest(dest: dict, data: bytes, content_type: str, what: str = "media") -> str:
    """Write data to a {"path"} (atomically: a partial file renamed) or {"url"} (the put hook); the dest."""
    if "url" in dest:
        _hooks["put"](dest["url"], data, content_type)
        return dest["url"]
    path = dest["path"]
    sweep_partials(path)
    tmp = partial_path(path)
    try:
        with removed_if_stopped(tmp):
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
    except OSError as e:
        raise file_error(e, path, what) from None
    return path


def remove_tree_quiet(path: str) -> None:
    """Remove a file or a directory tree; nothing if it is gone."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def final_errors(name: str, fn: Callable) -> Callable:
    """Task `name` whose unexpected errors of the payload's or the media's making end it dead: a TypeError,
    ValueError, KeyError... is the same on every attempt, so it becomes MediaError naming the task and the
    error.  OSError (a file, a disk, a mount) and MemoryError pass: a retry may succeed."""

    @functools.wraps(fn)
    def task(payload):
        try:
            return fn(payload)
        except (MediaError, OSError, MemoryError):
            raise
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ArithmeticError, LookupError,
                UnicodeError, AssertionError) as e:
            raise MediaError(f"{name}: {type(e).__name__}: {e}") from None
    return task
