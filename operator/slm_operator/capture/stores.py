"""``open_store(url)``: the usage store a URL names; ``STORE_ERRORS``: what using one may raise."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

from slm_operator.capture.postgres_store import PostgresStore
from slm_operator.capture.sqlite_store import SQLiteStore
from slm_operator.capture.store import Store, StoreError

#: What opening, reading or writing a store may raise when the store, not the program, is at fault (it is
#: unreachable, refuses the credentials, is not a usage store): the commands turn these into a message.
STORE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    StoreError,
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)

STORE_URL_FORMS = (
    "sqlite:///absolute/path/usage.db, sqlite:relative/usage.db or postgresql://user@host:port/db"
)


def shown_url(url: str) -> str:
    """``url`` fit for a message or a status: its password replaced by ``***`` (a FineTuneJob's export step
    quotes the store in its errors, and those reach the FineTuneJob's conditions)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:***@{host}").geturl()


def open_store(url: str, *, existing: bool = False) -> Store:
    """The store for ``url`` (nothing is connected until it is first used):

    * ``sqlite:///var/lib/slm/usage.db`` (absolute path) or ``sqlite:usage.db`` (relative to the working
      folder): the embedded store, one file;
    * ``postgresql://user@host:5432/db`` (or ``postgres://``): PostgreSQL; the password from the URL,
      ``PGPASSWORD`` or ``~/.pgpass``.

    ValueError names the accepted forms. With ``existing``, a SQLite file that does not exist is a StoreError
    (reading commands must not create an empty store where a path was mistyped)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if parts.netloc:
            raise ValueError(
                f"{url!r}: a SQLite URL has no host; use sqlite:///absolute/path.db or sqlite:relative/path.db"
            )
        if not parts.path or parts.path == "/":
            raise ValueError(f"{url!r}: no database file; e.g. sqlite:///var/lib/slm/usage.db")
        if existing and not Path(parts.path).exists():
            raise StoreError(f"{parts.path}: no such usage store (a SQLite file the gateway writes)")
        return SQLiteStore(Path(parts.path))
    if parts.scheme in ("postgresql", "postgres"):
        return PostgresStore(url)
    raise ValueError(f"unsupported store URL {shown_url(url)!r}: use {STORE_URL_FORMS}")
