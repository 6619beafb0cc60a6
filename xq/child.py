"""What a child process does: read task frames from its ring, run handlers, write result frames back.

A child never talks to Redis.  It decodes the payload (orjson or raw bytes), runs the handler, and
encodes the result; the supervisor owns every Redis interaction and every lease.

Control block shared with the supervisor (one anonymous shared mapping per child, 8-byte words):
    CTL_STOP     supervisor sets 1: finish the current task, start no other, exit 0
    CTL_CURRENT  child sets the seq of the task it is running, 0 between tasks; read by the supervisor
                 after the child died to tell the one lost attempt from tasks never started
    CTL_READY    child sets 1 once booted
    CTL_DONE     tasks finished by this child
    CTL_STARTED  child sets the CLOCK_MONOTONIC time (ms) at which it started CTL_CURRENT; read by the
                 supervisor to enforce timeouts
    CTL_CANCEL.. 2048 words: the supervisor writes a canceled task's seq into word CTL_CANCEL + seq % 2048;
                 the child skips such a task, or, if it is running it, raises xq.Cancelled in the handler
                 when SIGUSR1 arrives
"""

from __future__ import annotations

import ctypes
import linecache
import logging
import os
import signal
import threading
import time
import traceback

import orjson

from . import context
from ._impl import fast
from .app import ProcessorSetupError, setup_processors
from .errors import Cancelled, NonRetryable, Retry

CTL_STOP, CTL_CURRENT, CTL_READY, CTL_DONE, CTL_STARTED = 0, 1, 2, 3, 4
# More cancel words than a child's ring holds tasks (supervisor.MAX_DEPTH), so two pending cancels of one
# child rarely share a word; if they do, the one overwritten starts and is stopped like a running task
# (xq.Cancelled, then SIGKILL after the grace): later than it could be, but canceled all the same.
CTL_CANCEL, CANCEL_SLOTS = 64, 2048
CTL_SIZE = 8 * (CTL_CANCEL + CANCEL_SLOTS)
CANCEL_SIGNAL = signal.SIGUSR1
EXIT_BOOT_FAILED = 3
MAX_ERROR = 8192
_PR_SET_PDEATHSIG = 1
PROGRESS_INTERVAL = 0.05   # seconds: at most one progress frame per task this often (plus the last one)
PROGRESS_FLUSH_TRIES = 5000  # x 0.2 ms: how long the last progress waits for ring space before it is dropped

log = logging.getLogger("xq")


def _die_with_parent(parent_pid: int) -> None:
    # A supervisor killed by SIGKILL cannot stop its children; the kernel can.  PDEATHSIG fires when the
    # parent exits, even while this child is deep in C code; the getppid() check closes the race where
    # the parent died before prctl ran.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(0)


def _format_exception(e: BaseException, depth: int = 0) -> list[str]:
    """The traceback as `traceback.format_exception` shows it, without its costs: Python 3.11's formatter
    stats every source file (linecache.checkcache) and parses each line with ast to place ^^^ markers,
    ~100 us an exception on this project's VM, which made a drain where 10% of tasks failed once spend
    more CPU formatting tracebacks than running tasks.  Source lines come from linecache as is."""
    out: list[str] = []
    if depth < 5:
        if e.__cause__ is not None:
            out += _format_exception(e.__cause__, depth + 1)
            out.append("\nThe above exception was the direct cause of the following exception:\n\n")
        elif e.__context__ is not None and not e.__suppress_context__:
            out += _format_exception(e.__context__, depth + 1)
            out.append("\nDuring handling of the above exception, another exception occurred:\n\n")
    if e.__traceback__ is not None:
        out.append("Traceback (most recent call last):\n")
        for frame, lineno in traceback.walk_tb(e.__traceback__):
            code = frame.f_code
            out.append(f'  File "{code.co_filename}", line {lineno}, in {code.co_name}\n')
            line = linecache.getline(code.co_filename, lineno, frame.f_globals).strip()
            if line:
                out.append(f"    {line}\n")
    out.append(f"{type(e).__qualname__}: {e}\n" if str(e) else f"{type(e).__qualname__}\n")
    return out


def _error_text(e: BaseException) -> bytes:
    text = f"{type(e).__name__}: {e}\n" + "".join(_format_exception(e))
    b = text.encode("utf-8", "replace")
    return b if len(b) <= MAX_ERROR else b[: MAX_ERROR // 2] + b"\n...\n" + b[-MAX_ERROR // 2:]


def _failure_policy(spec, attempt: int, e: BaseException) -> float | None:
    """Seconds until the next attempt, or None if the error must not be retried."""
    if isinstance(e, Retry):
        return spec.backoff.delay(attempt) if e.delay is None else e.delay
    if isinstance(e, NonRetryable) or not isinstance(e, spec.retry_on):
        return None
    return spec.backoff.delay(attempt)


def _ms(seconds: float) -> bytes:
    return b"%d" % max(0, int(seconds * 1000))


class Runner:
    """Decodes one task frame, runs its handler, returns (seq, status, rct, body, error).

    A failure is ST_RETRY with body b"<delay ms>,<max_retries>" when the task's policy retries it (the
    COMPLETE script then checks the attempts left), else ST_FAILED (dead at once).  Progress the handler
    reports goes straight into outring as ST_PROGRESS frames, always before the task's result.  The app's
    middleware wraps each handler run: a before_task that raises fails the attempt (the task's retry policy
    applies) and the error names the middleware; after_task / on_error errors are logged and ignored."""

    def __init__(self, app, queues: list[str], ctl=None, outring=None):
        self.specs = {name.encode(): spec for name, spec in app.tasks.items()}
        self.queues = queues
        self.known = ", ".join(sorted(app.tasks)) or "(none)"
        self.ctl = ctl
        self.in_handler = False  # a cancel signal raises xq.Cancelled only while a handler runs
        self.middleware = list(getattr(app, "middleware", ()))
        self.out = outring       # progress frames go here; None: progress is dropped
        self._seq = 0            # the task progress() reports for
        self._pending = None     # (seq, pct, message, time) not sent yet: throttled, or the ring was full
        self._next_send = 0.0    # monotonic time before which progress is only kept, not sent
        self._report_cb = self._report  # one bound method, not one per task
        # The outring has one producer: the flusher thread (started on the first throttled report) and
        # this thread's result writes take this lock once it exists.
        self.lock = threading.Lock()
        self.flusher: threading.Thread | None = None
        self._flush_due = threading.Event()

    def canceled(self, seq: int) -> bool:
        return self.ctl is not None and self.ctl[CTL_CANCEL + seq % CANCEL_SLOTS] == seq

    def _report(self, pct, message) -> None:
        # A handler calling progress() in a tight loop must not flood the ring: keep the latest value and
        # send at most one frame per PROGRESS_INTERVAL.  A throttled value is sent by the flusher thread
        # when the interval ends (a handler may report and then compute for minutes), or before the result.
        with self.lock:
            self._pending = (self._seq, pct, message, time.time())
            now = time.monotonic()
            if now >= self._next_send:
                self._next_send = now + PROGRESS_INTERVAL
                self._send_progress(False)
                return
        if self.out is not None:
            if self.flusher is None:
                self.flusher = threading.Thread(target=self._flush_loop, name="xq-progress", daemon=True)
                self.flusher.start()
            self._flush_due.set()

    def _flush_loop(self) -> None:
        while True:
            self._flush_due.wait()
            self._flush_due.clear()
            time.sleep(max(0.0, self._next_send - time.monotonic()))
            with self.lock:
                if self._pending is not None and self._pending[0] == self._seq and self.in_handler:
                    self._next_send = time.monotonic() + PROGRESS_INTERVAL
                    self._send_progress(False)

    def _send_progress(self, final: bool) -> None:
        seq, pct, message, ts = self._pending
        if self.out is None:
            self._pending = None
            return
        pj, mj = orjson.dumps(pct), orjson.dumps(message)
        head = fast.encode_result_head(seq, fast.ST_PROGRESS, b"j", ts, ts,
                                       b'"progress":' + pj + b',"message":' + mj)
        body = b'{"pct":' + pj + b',"msg":' + mj + b',"ts":%d}' % int(ts * 1000)
        size = self.out.message_size(head, body)
        # Progress is best effort: a full ring keeps it pending (intermediate) or waits a bounded time (final).
        for _ in range(PROGRESS_FLUSH_TRIES if final else 1):
            if self.out.write(head, body) == size:
                self._pending = None
                return
            time.sleep(0.0002)
        if final:
            self._pending = None

    def _flush_progress(self) -> None:
        with self.lock:
            if self._pending is not None:
                self._send_progress(True)

    def _hooks(self, mws, hook: str, ctx, arg) -> None:
        # after_task / on_error run last-registered first (a stack); their errors cannot change the outcome
        for m in reversed(mws):
            try:
                getattr(m, hook)(ctx, arg)
            except Exception:
                log.exception("middleware %s.%s failed for task %s (%s); ignored", type(m).__name__, hook,
                              ctx.id, ctx.name)

    def run(self, head: bytes, body: bytes) -> tuple[int, int, bytes, bytes, bytes]:
        try:
            seq, attempt, ct, qidx, tid, name = fast.decode_task_head(head)
            tid_s, name_s, queue = tid.decode(), name.decode(), self.queues[qidx]
        except (ValueError, IndexError) as e:  # UnicodeDecodeError is a ValueError
            # a frame this child cannot read fails its task alone (the seq leads every head)
            return (int.from_bytes(head[:8], "little"), fast.ST_FAILED, b"j", b"",
                    f"malformed task frame (id, name or queue index): {e}".encode())
        if self.canceled(seq):
            return seq, fast.ST_CANCELED, b"j", b"", b"canceled before it started"
        spec = self.specs.get(name)
        if spec is None:
            return seq, fast.ST_FAILED, b"j", b"", (
                f"unknown task name {name.decode('utf-8', 'replace')!r}; this worker knows: {self.known}"
            ).encode()
        try:
            if ct == b"j":
                payload = orjson.loads(body)
            elif ct == b"b":
                payload = body
            else:
                return seq, fast.ST_FAILED, b"j", b"", (
                    f"unknown payload content type {ct!r}: expected 'j' (JSON) or 'b' (bytes)").encode()
        except orjson.JSONDecodeError as e:
            return seq, fast.ST_FAILED, b"j", b"", f"malformed JSON payload: {e}".encode()
        ctx = context.TaskContext(tid_s, name_s, queue, attempt, self._report_cb)
        context._set(ctx)
        self._seq, self._pending, self._next_send = seq, None, 0.0
        mws = self.middleware
        entered, failed_mw = 0, None
        try:
            self.in_handler = True
            # Look again now that a cancel signal would raise: the supervisor writes the cancel word, then
            # signals a child whose CTL_CURRENT is this task, and a signal that came before in_handler was
            # set was ignored, so a cancel written after the first look would otherwise go unseen.
            if self.canceled(seq):
                raise Cancelled("canceled before it started")
            for m in mws:
                failed_mw = m
                m.before_task(ctx, payload)
                entered += 1
            failed_mw = None
            result = spec.resolve()(payload)
            self.in_handler = False
        except BaseException as e:  # noqa: BLE001 - a handler's SystemExit must not end the child silently
            self.in_handler = False
            if self._pending is not None:
                self._flush_progress()
            if entered:
                self._hooks(mws[:entered], "on_error", ctx, e)
            if self.canceled(seq):
                return seq, fast.ST_CANCELED, b"j", b"", _error_text(e) if not isinstance(e, Cancelled) \
                    else (str(e) if e.args else "canceled while running").encode()
            if failed_mw is not None and not isinstance(e, Cancelled):
                out = self._failure(seq, spec, attempt, e)
                return out[:4] + (f"middleware {type(failed_mw).__name__}.before_task failed: ".encode() + out[4],)
            return self._failure(seq, spec, attempt, e)
        else:
            if self._pending is not None:
                self._flush_progress()
            if entered:
                self._hooks(mws, "after_task", ctx, result)
        finally:
            self.in_handler = False
            context._set(None)
        if self.canceled(seq):
            return seq, fast.ST_CANCELED, b"j", b"", b"canceled while running (the handler finished anyway)"
        if isinstance(result, (bytes, bytearray, memoryview)):
            return seq, fast.ST_DONE, b"b", bytes(result), b""
        try:
            return seq, fast.ST_DONE, b"j", orjson.dumps(result), b""
        except TypeError as e:
            return seq, fast.ST_FAILED, b"j", b"", (
                f"result of type {type(result).__name__} cannot be serialized to JSON: {e}").encode()

    def _failure(self, seq: int, spec, attempt: int, e: BaseException):
        try:
            delay = _failure_policy(spec, attempt, e)
        except Exception as pe:  # a broken backoff must not lose the task: fail it, saying why
            _log_failure(spec, attempt, e, "not retried: its retry policy failed")
            return seq, fast.ST_FAILED, b"j", b"", _error_text(e) + f"\n(retry policy failed: {pe!r})".encode()
        if delay is None:
            _log_failure(spec, attempt, e, "not retried")
            return seq, fast.ST_FAILED, b"j", b"", _error_text(e)
        _log_failure(spec, attempt, e, "")  # retried or dead: the record's max_retries decides, in COMPLETE
        return seq, fast.ST_RETRY, b"j", _retry_body(delay, spec.max_retries), _error_text(e)


def _log_failure(spec, attempt: int, e: BaseException, then: str) -> None:
    """One line a failed attempt, as Celery and RQ log them (the traceback is in the task's record)."""
    ctx = context._current
    first = str(e).splitlines()[0] if str(e) else ""
    log.warning("task %s (%s) attempt %d failed%s: %s%s", ctx.id if ctx else "?", spec.name, attempt,
                f", {then}" if then else "", type(e).__name__, f": {first[:300]}" if first else "")


def _retry_body(delay: float, max_retries: int) -> bytes:
    return _ms(delay) + b",%d" % max_retries


# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
RETAIN_MMAP_BELOW = 32 << 20      # blocks under 32 MiB come from the heap, not a fresh mmap each time
RETAIN_TRIM_ABOVE = 256 << 20     # free heap is given back to the OS only past 256 MiB


def retain_freed_memory() -> bool:
    """Keep memory a task freed for the next task instead of giving it back to the OS (glibc only).

    By default glibc serves each block over ~128 KiB-32 MiB with its own mmap and unmaps it on free, and
    trims the heap top, so a handler that decodes an image page-faults every buffer in again on every
    task.  On this project's VMs a page fault costs microseconds: an 800x600 JPEG thumbnail took 4.9 ms
    of CPU with the defaults and 2.6 ms with these settings.  The price is RSS that stays at the
    handler's peak; --max-memory-per-child bounds it.  Returns False where mallopt is not available."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, RETAIN_MMAP_BELOW)) and bool(mallopt(_M_TRIM_THRESHOLD, RETAIN_TRIM_ABOVE))


def child_main(app, queues: list[str], inring, outring, ctl, parent_pid: int, max_tasks: int = 0,
               retain_memory: bool = True) -> None:
    """Entry point of a forked child; never returns (exits the process)."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the supervisor's to handle
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        _die_with_parent(parent_pid)
        if retain_memory:
            retain_freed_memory()
        runner = Runner(app, queues, ctl, outring)
        try:
            setup_processors(app, queues)  # before CTL_READY: a failing setup() is a boot failure
        except ProcessorSetupError as e:
            log.critical("child %d cannot boot: %s", os.getpid(), e, exc_info=e.__cause__)
            os._exit(EXIT_BOOT_FAILED)

        def on_cancel(signum, frame):
            cur = ctl[CTL_CURRENT]
            if runner.in_handler and cur and runner.canceled(cur):
                raise Cancelled("canceled while running")

        signal.signal(CANCEL_SIGNAL, on_cancel)
        ctl[CTL_READY] = 1
    except BaseException:
        traceback.print_exc()
        os._exit(EXIT_BOOT_FAILED)
    try:
        code = _loop(runner, inring, outring, ctl, parent_pid, max_tasks)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def _loop(runner: Runner, inring, outring, ctl, parent_pid: int, max_tasks: int) -> int:
    read, run, now, mono = inring.read, runner.run, time.time, time.monotonic
    encode = fast.encode_result_head
    done = 0
    while not ctl[CTL_STOP]:
        msg = read()
        if msg is None:
            # Sleep until the supervisor writes; the timeout only bounds how late a dead parent or a
            # stop request is noticed.
            if not inring.wait(0.5) and os.getppid() != parent_pid:
                return 0
            continue
        if ctl[CTL_STOP]:
            break  # read but not started: the supervisor re-dispatches it
        head, body = msg
        if not head:
            continue  # a wake-up frame (stop request), nothing to run
        ctl[CTL_STARTED] = int(mono() * 1000)
        ctl[CTL_CURRENT] = int.from_bytes(head[:8], "little")
        started = now()
        seq, status, rct, result, error = run(head, body)
        rhead = encode(seq, status, rct, started, now(), error)
        off, size = 0, outring.message_size(rhead, result)
        if runner.flusher is not None:
            runner.lock.acquire()  # the progress flusher writes into this ring too
        try:
            while True:
                off = outring.write(rhead, result, off)
                if off == size:
                    break
                time.sleep(0.0002)  # ring full: the supervisor drains it continuously
                if os.getppid() != parent_pid:
                    return 0
        finally:
            if runner.flusher is not None:
                runner.lock.release()
        ctl[CTL_CURRENT] = 0
        done += 1
        ctl[CTL_DONE] = done
        if done == max_tasks:
            break  # recycled: exit 0; tasks still in the ring go to other children
    return 0
