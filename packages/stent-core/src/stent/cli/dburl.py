"""Which database a command talks to: ``--db URL``, else ``STENT_DATABASE_URL``, else
``DATABASE_URL``.

The URL's scheme decides the backend, and nothing is ever guessed:

* ``sqlite:///relative/path``, ``sqlite:////absolute/path``, ``sqlite:///:memory:``
* ``postgresql://user:password@host:5432/db`` (or ``postgres://``)
* ``memory://`` (an in-process store, gone when the command exits; for trying things out)

Anything else is a :class:`~stent.cli.errors.UsageError`. URLs are only ever shown through
:func:`mask_url`, so a password never reaches the terminal or a log; and every password this
module has seen is remembered, so that :func:`scrub` can take it out of any other text (an
error from a driver, a log line) before it is printed.

PostgreSQL tables live in the schema given by ``--schema`` or ``STENT_SCHEMA`` (default
``public``). A ``search_path`` in the URL's ``options`` would not work: the backend sets the
search path of every connection to its own schema.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from .errors import UnavailableError, UsageError

if TYPE_CHECKING:
    from stent.backend import Backend

__all__ = [
    "ENV_VARS",
    "SCHEMA_ENV_VAR",
    "backend_from_url",
    "mask_url",
    "remember_secrets",
    "resolve_database_url",
    "resolve_schema",
    "scrub",
    "sqlite_path_from_url",
]

ENV_VARS = ("STENT_DATABASE_URL", "DATABASE_URL")
"""Environment variables consulted, in order, when no ``--db`` is given."""
SCHEMA_ENV_VAR = "STENT_SCHEMA"
"""Environment variable naming the PostgreSQL schema when no ``--schema`` is given."""

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_SECRET_QUERY = re.compile(
    r"(?i)((?:^|[?&;\s])(?:password|passwd|pwd|secret|token|sslpassword)\s*=\s*)"
    r"('[^']*'|[^&;#\s]*)"
)
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"]+")
#: every password seen in a database URL by this process, longest first once sorted
_secrets: set[str] = set()


def _password_of(url: str) -> str | None:
    """The password in the user information of ``url`` (``user:password@host``), if any."""
    _, sep, rest = url.partition("://")
    if not sep:
        rest = url
    if "@" not in rest:
        return None
    userinfo = rest.rpartition("@")[0]
    _user, colon, password = userinfo.partition(":")
    return password if colon and password else None


def remember_secrets(url: str) -> None:
    """Remember every password in ``url`` (and its percent-encoded and decoded forms), for
    :func:`scrub`."""
    found = [m.group(2).strip("'") for m in _SECRET_QUERY.finditer(url)]
    password = _password_of(url)
    if password is not None:
        found.append(password)
    for secret in found:
        for form in (secret, unquote(secret), quote(secret, safe=""), quote(unquote(secret),
                                                                            safe="")):
            if len(form) >= 3:  # shorter ones would blot out ordinary text
                _secrets.add(form)


def scrub(text: str) -> str:
    """``text`` with the passwords of URLs in it and every remembered password replaced by
    ``***``: the last line of defence before anything is printed or logged."""
    text = _URL_IN_TEXT.sub(lambda m: mask_url(m.group(0)), text)
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
_EXPECTED = "expected sqlite:///path, postgresql://... or memory://"


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (``user:secret@host`` -> ``user:***@host``;
    ``?password=...`` too).

    The last ``@`` ends the user information, so an unescaped ``@`` inside a password is
    masked with it rather than leaked.
    """
    head, sep, rest = url.partition("://")
    if not sep:  # ``user:secret@host/db`` without a scheme: still a password to hide
        head, rest = "", url
    if "@" in rest:
        userinfo, _, hostpart = rest.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            rest = f"{user}:***@{hostpart}"
    return _SECRET_QUERY.sub(r"\1***", f"{head}{sep}{rest}")


def resolve_database_url(
    url: str | None, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """The database URL to use and where it came from.

    Args:
        url: the ``--db`` option, if given (an empty string counts as not given).
        environ: the environment (default ``os.environ``).

    Returns:
        ``(url, source)``, where source is ``"--db"`` or the environment variable's name.

    Raises:
        UsageError: no URL anywhere.
    """
    env = os.environ if environ is None else environ
    if url:
        remember_secrets(url)
        return url, "--db"
    for name in ENV_VARS:
        value = env.get(name, "").strip()
        if value:
            remember_secrets(value)
            return value, name
    raise UsageError(
        "no database given: pass --db URL or set STENT_DATABASE_URL "
        f"({_EXPECTED})"
    )


def sqlite_path_from_url(url: str) -> str:
    """The file path in a ``sqlite:///...`` URL (``:memory:`` for an in-memory database).

    ``sqlite:///data/stent.db`` is relative to the current directory and
    ``sqlite:////var/lib/stent.db`` is absolute, as in SQLAlchemy.

    Raises:
        UsageError: not a well-formed ``sqlite:///`` URL.
    """
    prefix = "sqlite://"
    if url[: len(prefix)].lower() != prefix:
        raise UsageError(f"not a sqlite URL: {mask_url(url)!r}")
    rest = url[len(prefix):]
    if not rest.startswith("/"):
        raise UsageError(
            f"invalid sqlite URL {mask_url(url)!r}: a SQLite database has no host; "
            "write sqlite:///relative/path or sqlite:////absolute/path"
        )
    path = rest[1:]
    if "?" in path or "#" in path:
        raise UsageError(
            f"invalid sqlite URL {mask_url(url)!r}: query strings and fragments are not supported"
        )
    path = unquote(path)
    if not path:
        raise UsageError(f"invalid sqlite URL {mask_url(url)!r}: no file path after sqlite:///")
    return path


def _scheme_of(url: str) -> str | None:
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None


def _load(module: str, attr: str, what: str, dist: str) -> Any:
    """``module.attr``, or an :class:`UnavailableError` with an install hint."""
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UnavailableError(
            f"{what} needs {module}.{attr}, which is not available ({exc}); "
            f"install or upgrade it: pip install {dist}"
        ) from exc


def resolve_schema(
    schema: str | None, environ: Mapping[str, str] | None = None
) -> tuple[str | None, str]:
    """The PostgreSQL schema to use and where it came from.

    Args:
        schema: the ``--schema`` option, if given (an empty string counts as not given).
        environ: the environment (default ``os.environ``).

    Returns:
        ``(schema, source)``: source is ``"--schema"`` or ``STENT_SCHEMA``; ``(None, "")``
        when neither is set (the backend's default, ``public``).
    """
    env = os.environ if environ is None else environ
    if schema:
        return schema, "--schema"
    value = env.get(SCHEMA_ENV_VAR, "").strip()
    return (value, SCHEMA_ENV_VAR) if value else (None, "")


def backend_from_url(
    url: str | None, environ: Mapping[str, str] | None = None, *, schema: str | None = None
) -> Backend:
    """Make the backend a database URL names (see the module docstring).

    Args:
        url: the ``--db`` option; None (or empty) falls back to ``STENT_DATABASE_URL``, then
            ``DATABASE_URL``.
        environ: the environment to read (default ``os.environ``).
        schema: the ``--schema`` option; None falls back to ``STENT_SCHEMA``, then
            ``public``. Only PostgreSQL has schemas: giving ``--schema`` with another
            database is a usage error (``STENT_SCHEMA`` is then ignored).

    Returns:
        An unopened backend; call ``await backend.init_db()`` or just use it.

    Raises:
        UsageError: no URL, or a URL whose scheme is not supported (exit status 2). The
            message names the scheme and shows the URL with its password masked.
        UnavailableError: the package for that scheme is not installed (exit status 1).
    """
    resolved, source = resolve_database_url(url, environ)
    scheme = _scheme_of(resolved)
    shown = mask_url(resolved)
    chosen_schema, schema_source = resolve_schema(schema, environ)
    if schema_source == "--schema" and scheme not in ("postgresql", "postgres"):
        raise UsageError(f"--schema is for PostgreSQL databases, not {shown!r}")
    if scheme == "sqlite":
        path = sqlite_path_from_url(resolved)
        cls = _load("stent_postgres", "SQLiteBackend", "a sqlite:// database", "stent-postgres")
        return cls(path)  # type: ignore[no-any-return]
    if scheme in ("postgresql", "postgres"):
        cls = _load("stent_postgres", "PostgresBackend", "a postgresql:// database",
                    "stent-postgres")
        if chosen_schema is None:
            return cls(resolved)  # type: ignore[no-any-return]
        try:
            return cls(resolved, schema=chosen_schema)  # type: ignore[no-any-return]
        except ValueError as exc:  # an invalid schema name; the message names the schema
            raise UsageError(f"{exc} (from {schema_source})") from None
    if scheme == "memory":
        if resolved.lower().rstrip("/") not in ("memory:", "memory:/"):
            raise UsageError(f"invalid database URL {shown!r} (from {source}): write memory://")
        cls = _load("stent_testing.memory", "InMemoryBackend", "a memory:// database",
                    "stent-testing")
        return cls()  # type: ignore[no-any-return]
    if scheme is None:
        raise UsageError(
            f"database URL {shown!r} (from {source}) has no scheme; {_EXPECTED}"
        )
    raise UsageError(
        f"unsupported database URL scheme {scheme!r} in {shown!r} (from {source}); {_EXPECTED}"
    )
