"""Bearer tokens of `xq web`: who may read and who may change the queues.

A token spec is `name:role:token`; several are separated by commas in $XQ_WEB_TOKENS, or one per line in
a tokens file (blank lines and lines starting with # ignored).  role is `read` (inspection) or `admin`
(inspection, submit, cancel, pause/resume).  The name only labels the token in logs: the token itself is
never logged or echoed, not even in an error about a malformed spec.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from ..errors import ConfigError

ROLES = ("read", "admin")
MIN_TOKEN = 16  # characters: a short secret is guessable


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    role: str
    secret: bytes


def parse_tokens(specs, source: str) -> list[Token]:
    """Token of each `name:role:token` spec, or ConfigError naming the source and the entry (by position
    and name, never by its secret)."""
    out, names = [], set()
    for i, spec in enumerate(specs, 1):
        spec = spec.strip()
        if not spec:
            continue
        name, _, rest = spec.partition(":")
        role, _, secret = rest.partition(":")
        where = f"{source}: entry {i}" + (f" ({name!r})" if name and ":" in spec else "")
        if not name or not secret:
            raise ConfigError(f"{where}: expected name:role:token")
        if role not in ROLES:
            raise ConfigError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        if len(secret) < MIN_TOKEN:
            raise ConfigError(f"{where}: the token is shorter than {MIN_TOKEN} characters")
        if name in names:
            raise ConfigError(f"{where}: the name {name!r} is used twice")
        names.add(name)
        out.append(Token(name, role, secret.encode()))
    return out


def load_tokens(tokens_file: str | None = None, env: str | None = None) -> list[Token]:
    """The tokens of tokens_file and of $XQ_WEB_TOKENS (env, if given, instead of the variable)."""
    env = os.environ.get("XQ_WEB_TOKENS", "") if env is None else env
    tokens = parse_tokens(env.split(","), "XQ_WEB_TOKENS")
    if tokens_file:
        try:
            with open(tokens_file, encoding="utf-8") as f:
                lines = [ln for ln in f.read().splitlines() if not ln.lstrip().startswith("#")]
        except OSError as e:
            raise ConfigError(f"cannot read the tokens file {tokens_file!r}: {e.strerror}") from None
        tokens += parse_tokens(lines, f"tokens file {tokens_file!r}")
    names = [t.name for t in tokens]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ConfigError(f"the token name {dup!r} is used twice (XQ_WEB_TOKENS and the tokens file)")
    return tokens


def match(tokens: list[Token], header: str | None) -> Token | None:
    """The token an `Authorization: Bearer ...` header carries, or None.  Every token is compared, each
    in constant time, so the time taken says nothing about which one (or how much of one) matched."""
    if not header:
        return None
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return None
    given_b = given.strip().encode()
    found = None
    for t in tokens:
        if hmac.compare_digest(t.secret, given_b) and found is None:
            found = t
    return found


class FailLimiter:
    """Failed-authentication rate limit per client address, in memory: after `limit` bad tokens within
    `window` seconds an address is refused (429) for `block` seconds, good token or not.  At most
    `max_clients` addresses are tracked; past that the oldest entry is dropped, so a flood of addresses
    costs bounded memory (and may forget a blocked one early: a limit, not a wall)."""

    def __init__(self, limit: int = 10, window: float = 60.0, block: float = 300.0, max_clients: int = 10_000):
        self.limit, self.window, self.block, self.max_clients = limit, window, block, max_clients
        self._seen: dict[str, tuple[float, int, float]] = {}  # address -> (window start, fails, blocked until)

    def blocked_for(self, addr: str, now: float) -> float:
        """Seconds the address is still refused (0: not blocked)."""
        entry = self._seen.get(addr)
        return max(0.0, entry[2] - now) if entry else 0.0

    def fail(self, addr: str, now: float) -> None:
        start, fails, until = self._seen.pop(addr, (now, 0, 0.0))
        if now - start > self.window:
            start, fails = now, 0
        fails += 1
        if fails >= self.limit:
            until = now + self.block
        self._seen[addr] = (start, fails, until)  # re-inserted: the dict stays oldest-touched first
        while len(self._seen) > self.max_clients:
            del self._seen[next(iter(self._seen))]
