"""The caller as a salted hash: what the gateway stores and what ``usage erase`` looks for.

Pure apart from ``load_salt``, which reads the salt file both sides must read the same way.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path


def caller_hash(identity: str, salt: bytes) -> str:
    """HMAC-SHA256 of the caller identity keyed by the salt, as 64 hex digits.

    A keyed hash rather than a plain one: without the salt nobody can test a guessed identity against the
    stored hashes, and a new salt makes the old hashes unlinkable to new records."""
    if not salt:
        raise ValueError("the caller-hash salt is empty: put at least 16 random bytes in the salt file")
    return hmac.new(salt, identity.encode("utf-8"), hashlib.sha256).hexdigest()


def load_salt(path: Path) -> bytes:
    """The salt from a file (e.g. a mounted Secret key), trailing newlines removed so that a salt written
    with ``echo`` and one written with ``printf`` agree. The gateway and ``usage erase`` both read it here."""
    salt = Path(path).read_bytes().rstrip(b"\r\n")
    if not salt:
        raise ValueError(f"{path}: the salt file is empty; put at least 16 random bytes in it")
    return salt
