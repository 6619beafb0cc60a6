"""A TCP fault proxy for tests: sits between xq and a redis-server on loopback and breaks the network on
demand (cut every connection, refuse new ones, stall or delay the bytes).

Two daemon threads pump each connection (one per direction); one thread accepts. Every socket has a short
timeout, so every thread notices stop() or a cut within POLL seconds even when it is blocked on a peer
that does not read. A cut never closes a socket under a thread that may still use it (the fd number could
be reused by a new connection): it shuts the receive sides down (which wakes the pumps and sends nothing on
the wire), and the last pump to leave closes both sockets with SO_LINGER 0, i.e. with a RST to each peer.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

POLL = 0.2  # seconds a blocked pump or the acceptor sleeps at most before it checks for stop/cut
CHUNK = 256 * 1024
_LINGER_0 = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST instead of FIN


def _abort(sock: socket.socket) -> None:
    """Close sock with a RST (SO_LINGER 0); ignore a socket that is already gone."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Conn:
    """One proxied connection: the client's socket and ours to the target, and its two pumps."""

    def __init__(self, proxy: "FaultProxy", client: socket.socket, upstream: socket.socket):
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.dead = False            # set by kill(): the pumps leave at their next check
        self.closed = threading.Event()  # both sockets closed (by the last pump out)
        self._pumps_left = 2
        self._lock = threading.Lock()

    def start(self) -> None:
        for src, dst, name in ((self.client, self.upstream, "up"), (self.upstream, self.client, "down")):
            threading.Thread(target=self._pump, args=(src, dst, self.proxy._flowing[name]),
                             name=f"faultproxy-{name}", daemon=True).start()

    def kill(self) -> None:
        """Stop the pumps; the connection is closed (RST both ways) as soon as both have left."""
        self.dead = True
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RD)  # wakes a pump blocked in recv(); puts nothing on the wire
            except OSError:
                pass

    def _pump(self, src: socket.socket, dst: socket.socket, flowing: threading.Event) -> None:
        p = self.proxy
        try:
            while not self.dead:
                try:
                    data = src.recv(CHUNK)
                except socket.timeout:
                    continue
                if not data or self.dead:
                    break  # the peer closed (or we were cut): end the whole connection
                # stall: hold the chunk (and, by not reading, everything behind it) until resume()
                while not flowing.wait(POLL):
                    if self.dead:
                        return
                if p._delay > 0:
                    time.sleep(p._delay)
                view = memoryview(data)
                while view and not self.dead:
                    try:
                        n = dst.send(view)
                    except socket.timeout:
                        continue
                    view = view[n:]
        except OSError:
            pass  # reset by a peer, or shut down by kill(): either way this connection is over
        finally:
            self.dead = True
            self._leave()

    def _leave(self) -> None:
        with self._lock:
            self._pumps_left -= 1
            last = self._pumps_left == 0
        if not last:
            # wake the other pump (it may be blocked in recv on the other socket)
            for s in (self.client, self.upstream):
                try:
                    s.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
            return
        _abort(self.client)
        _abort(self.upstream)
        self.proxy._forget(self)
        self.closed.set()


class FaultProxy:
    """A TCP proxy on 127.0.0.1:<free port> in front of (target_host, target_port) that injects faults."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, int(target_port))
        self.port: int | None = None
        self.redis = None      # the fault_proxy fixture sets this to the EmbeddedRedis behind the proxy
        self.cuts = 0          # connections closed by cut() (and by refuse(True))
        self.accepted = 0      # connections accepted in total (refused ones included)
        self.refused = 0       # connections closed at once because refuse(True) was on
        self._conns: set[_Conn] = set()
        self._lock = threading.Lock()
        self._flowing = {"up": threading.Event(), "down": threading.Event()}  # set: bytes flow that way
        for e in self._flowing.values():
            e.set()
        self._delay = 0.0
        self._refusing = False
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._cutter: threading.Thread | None = None
        self._cutter_stop = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> "FaultProxy":
        """Listen on a free loopback port and start accepting."""
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0))
        ls.listen(128)
        ls.settimeout(POLL)
        self._listener = ls
        self.port = ls.getsockname()[1]
        self._stopping.clear()
        self._acceptor = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Stop cutting, stop accepting, close every connection and the listener; wait (bounded) for threads."""
        self.stop_cutting()
        self._stopping.set()
        self.resume()  # release stalled pumps so they see the stop
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        for c in self._snapshot():
            c.kill()
        deadline = time.monotonic() + 5
        for c in self._snapshot():
            c.closed.wait(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def url(self, db: int = 0, password: str | None = None) -> str:
        """redis://[:pw@]127.0.0.1:<port>/<db> through this proxy."""
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    @property
    def connections(self) -> int:
        """How many proxied connections are open right now."""
        with self._lock:
            return len(self._conns)

    # -- faults ---------------------------------------------------------------------------------------------------
    def cut(self) -> int:
        """Close every open connection at once (RST to both peers); returns how many were cut."""
        conns = self._snapshot()
        with self._lock:
            self.cuts += len(conns)
        for c in conns:
            c.kill()
        # wait (bounded) until they are really closed, so a caller's next command meets the closed socket
        deadline = time.monotonic() + 2 * POLL + 1
        for c in conns:
            c.closed.wait(max(0.0, deadline - time.monotonic()))
        return len(conns)

    def cut_randomly(self, mean_interval: float, duration: float) -> None:
        """In a background thread, cut() at random (exponential) intervals of mean_interval s for duration s."""
        self.stop_cutting()
        self._cutter_stop.clear()
        end = time.monotonic() + duration
        max_cuts = int(duration / mean_interval * 5) + 10  # a bound on the count too, whatever the draws

        def loop():
            for _ in range(max_cuts):
                left = end - time.monotonic()
                if left <= 0:
                    return
                if self._cutter_stop.wait(min(left, random.expovariate(1.0 / mean_interval))):
                    return
                if time.monotonic() < end:
                    self.cut()

        self._cutter = threading.Thread(target=loop, name="faultproxy-cutter", daemon=True)
        self._cutter.start()

    def stop_cutting(self) -> None:
        """End a cut_randomly() thread (waits for it, bounded)."""
        self._cutter_stop.set()
        if self._cutter is not None:
            self._cutter.join(timeout=5)
            self._cutter = None

    @property
    def cutting(self) -> bool:
        """True while a cut_randomly() thread is running."""
        return self._cutter is not None and self._cutter.is_alive()

    def delay(self, seconds: float) -> None:
        """Add `seconds` of latency to every chunk forwarded, each direction (0 turns it off)."""
        self._delay = max(0.0, float(seconds))

    def stall(self, direction: str = "both") -> None:
        """Stop forwarding bytes ("up": client -> server only, "down": replies only, or both): connections
        stay open, data is held until resume()."""
        if direction not in ("both", "up", "down"):
            raise ValueError(f"direction {direction!r}: expected 'both', 'up' or 'down'")
        for d in ("up", "down"):
            if direction in ("both", d):
                self._flowing[d].clear()

    def resume(self) -> None:
        """Forward held and new bytes again, both ways."""
        for e in self._flowing.values():
            e.set()

    def refuse(self, on: bool = True) -> None:
        """While on, accept new connections and close them at once (RST); turning it on cuts the open ones."""
        self._refusing = bool(on)
        if on:
            self.cut()

    # -- internals ------------------------------------------------------------------------------------------------
    def _snapshot(self) -> list[_Conn]:
        with self._lock:
            return list(self._conns)

    def _forget(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)

    def _accept_loop(self) -> None:
        ls = self._listener
        while not self._stopping.is_set():
            try:
                client, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return  # listener closed
            with self._lock:
                self.accepted += 1
            if self._refusing or self._stopping.is_set():
                with self._lock:
                    self.refused += 1
                _abort(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                _abort(client)  # the target is down: the client sees its connection reset
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(POLL)
            conn = _Conn(self, client, upstream)
            with self._lock:
                self._conns.add(conn)
            conn.start()
