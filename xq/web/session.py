"""The dashboard's session cookie, CSRF tokens and failed-login limit (stdlib only: hmac, base64, json).

A session cookie is `base64url(json {"sid", "name", "role", "exp"}) . base64url(HMAC-SHA256(key, body))`:
it holds the token's name and role, never the token.  The key is $XQ_WEB_SECRET or random at start (then
sessions end with the process).  A form's CSRF token is HMAC(key, "csrf:" + sid), so it is tied to the
session and needs no server-side store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict

import orjson

COOKIE = "xq_session"
TTL = 12 * 3600  # seconds a session lasts
FAIL_WINDOW = 60.0  # seconds over which failed logins are counted
FAIL_MAX = 5  # failed logins per client address per window
FAIL_ADDRS = 10_000  # addresses remembered at most (oldest forgotten first)


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


class Sessions:
    def __init__(self, secret: str | bytes | None = None):
        secret = secret if secret is not None else os.environ.get("XQ_WEB_SECRET") or secrets.token_bytes(32)
        self.key = secret.encode() if isinstance(secret, str) else secret
        self.fails: OrderedDict[str, list[float]] = OrderedDict()

    def _mac(self, data: bytes) -> bytes:
        return hmac.new(self.key, data, hashlib.sha256).digest()

    def issue(self, name: str, role: str, now: float | None = None) -> str:
        body = orjson.dumps({"sid": secrets.token_hex(16), "name": name, "role": role,
                             "exp": int((now or time.time()) + TTL)})
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def read(self, cookie: str | None, now: float | None = None) -> dict | None:
        """The session a cookie holds, or None if it is missing, forged or expired."""
        if not cookie or "." not in cookie:
            return None
        body_s, _, mac_s = cookie.partition(".")
        try:
            body, mac = _unb64(body_s), _unb64(mac_s)
        except (ValueError, TypeError):
            return None
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            s = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(s, dict) or s.get("exp", 0) < (now or time.time()):
            return None
        return s

    def csrf(self, session: dict) -> str:
        return _b64(self._mac(b"csrf:" + session["sid"].encode()))

    def csrf_ok(self, session: dict, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf(session), given)

    # ------------------------------------------------------------ failed logins
    def blocked(self, addr: str, now: float | None = None) -> bool:
        now = now or time.time()
        recent = [t for t in self.fails.get(addr, ()) if now - t < FAIL_WINDOW]
        return len(recent) >= FAIL_MAX

    def failed(self, addr: str, now: float | None = None) -> None:
        now = now or time.time()
        recent = [t for t in self.fails.pop(addr, ()) if now - t < FAIL_WINDOW][-FAIL_MAX:]
        self.fails[addr] = [*recent, now]
        while len(self.fails) > FAIL_ADDRS:
            self.fails.popitem(last=False)
