"""API keys and their roles: ``scorer`` may score and read tasks; ``admin`` may also add, replace and remove tasks.

Keys come from a file (one ``role:key`` a line, ``#`` comments, blank lines ignored) and/or ``SCOREPLEX_API_KEYS``
(``role:key`` separated by commas or whitespace). A presented key is compared with every configured key through
:func:`hmac.compare_digest` on their SHA-256 digests (constant time, whatever the lengths), and the loop does not stop
at the first match, so the time taken says nothing about which key, or how much of one, matched. Keys are never
logged: errors name the file and line, never the key, and :class:`ApiKeys` has no repr of its contents.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

from scoreplex.errors import ConfigError

ROLES = ("scorer", "admin")
"""From least to most: each role may do everything the roles before it may."""
MIN_KEY_CHARS = 16
_SPLIT = re.compile(r"[\s,]+")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def role_allows(role: str, needed: str) -> bool:
    """True if ``role`` may do what ``needed`` may (admin may score)."""
    return ROLES.index(role) >= ROLES.index(needed)


class ApiKeys:
    """The configured keys as (SHA-256 digest, role) pairs; empty means authentication is off (loopback only)."""

    def __init__(self, entries: list[tuple[str, str]] | None = None) -> None:
        self._entries: list[tuple[bytes, str]] = []
        for role, key in entries or []:
            self._entries.append((_digest(key), role))

    def __repr__(self) -> str:  # never the keys
        return f"ApiKeys({len(self._entries)} keys)"

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def role_of(self, presented: str | None) -> str | None:
        """The role of the presented key, or None if it matches no configured key."""
        if not presented:
            return None
        digest = _digest(presented)
        found = None
        for known, role in self._entries:  # no early exit: every key is compared
            if hmac.compare_digest(digest, known) and found is None:
                found = role
        return found

    @classmethod
    def load(cls, keys_file: Path | None = None, env_value: str | None = None) -> ApiKeys:
        """Keys from ``keys_file`` and ``env_value`` (``SCOREPLEX_API_KEYS``); ConfigError naming the line (never the
        key) for a malformed entry, an unknown role, a short key or one key given two roles."""
        entries: list[tuple[str, str]] = []
        if keys_file is not None:
            try:
                text = Path(keys_file).read_text(encoding="utf-8")
            except FileNotFoundError:
                raise ConfigError(f"keys file {keys_file} does not exist; check --keys-file.") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"keys file {keys_file} cannot be read as UTF-8 text ({exc}).") from None
            for n, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if line and not line.startswith("#"):
                    entries.append(_entry(line, f"keys file {keys_file}, line {n}"))
        if env_value:
            for n, item in enumerate(_SPLIT.split(env_value.strip()), 1):
                if item:
                    entries.append(_entry(item, f"SCOREPLEX_API_KEYS, entry {n}"))
        roles: dict[str, str] = {}
        for role, key in entries:
            if roles.setdefault(key, role) != role:
                raise ConfigError(f"one key is given two roles ({roles[key]} and {role}); give each key one role.")
        return cls(entries)


def _entry(item: str, where: str) -> tuple[str, str]:
    role, sep, key = item.partition(":")
    role = role.strip()
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{where}: expected 'role:key' (roles: {', '.join(ROLES)}).")
    if role not in ROLES:
        raise ConfigError(f"{where}: unknown role {role!r}; choose one of: {', '.join(ROLES)}.")
    if len(key) < MIN_KEY_CHARS or any(c.isspace() for c in key):
        raise ConfigError(
            f"{where}: the key is shorter than {MIN_KEY_CHARS} characters or holds whitespace; use a long random "
            "key, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`."
        )
    return role, key
