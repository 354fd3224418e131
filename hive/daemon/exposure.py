"""Exposure: services that publish variables (``expose``), services that use them (``uses``).

A provider's secret is kept only as a salted scrypt hash, in memory and on disk: the
registry replaces it as soon as a configuration is read (a ``hive.yaml`` may also hold
the hash itself, see ``hive secret hash``). The salt is derived from the provider's
identity (source, service, expose name), so the same configuration hashes the same and
a reload does not see a change; a consumer's secret is checked against it in constant
time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from hive.config import ExposeSpec, UsesSpec, render_runtime

__all__ = [
    "HASH_PREFIX",
    "alias_of",
    "hash_secret",
    "is_hashed",
    "provided_vars",
    "renamed_vars",
    "verify_secret",
]

HASH_PREFIX = "scrypt$"
# scrypt's usual interactive cost: about 50 ms and 16 MiB, paid once per check.
_N, _R, _P, _LENGTH = 2**14, 8, 1, 32


def is_hashed(secret: str) -> bool:
    return secret.startswith(HASH_PREFIX)


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    import hashlib  # here: only daemons with secrets load it

    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=length)


def hash_secret(secret: str, identity: str) -> str:
    """``scrypt$n$r$p$salt$hash``; an already hashed secret is returned as it is."""
    if is_hashed(secret):
        return secret
    import hashlib

    salt = hashlib.sha256(f"hive-expose:{identity}".encode()).digest()[:16]
    digest = _scrypt(secret, salt, _N, _R, _P, _LENGTH)
    return f"{HASH_PREFIX}{_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def random_hash(secret: str) -> str:
    """A hash with a random salt, for a user to paste into hive.yaml."""
    salt = os.urandom(16)
    digest = _scrypt(secret, salt, _N, _R, _P, _LENGTH)
    return f"{HASH_PREFIX}{_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_secret(candidate: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, expected = stored.split("$")
        digest = _scrypt(candidate, bytes.fromhex(salt), int(n), int(r), int(p), len(expected) // 2)
    except (ValueError, OverflowError, MemoryError):
        return False
    import hmac  # here, as hashlib: only daemons with secrets load it

    return hmac.compare_digest(digest.hex(), expected)


def alias_of(use: UsesSpec) -> str:
    """How ``{{uses.ALIAS.port.X}}`` names the provider: ``as``, else the expose name."""
    return use.as_ or use.name


def provided_vars(expose: ExposeSpec, ports: Mapping[str, int]) -> dict[str, str]:
    """The provider's variables, its own ``{{runtime.port.X}}`` resolved."""
    return {name: render_runtime(value, ports=ports) for name, value in expose.vars.items()}


def renamed_vars(use: UsesSpec, provided: Mapping[str, str]) -> dict[str, str]:
    """What the consumer gets: ``vars: {original: new}`` renames, the rest keep their names."""
    return {use.vars.get(name, name): value for name, value in provided.items()}
