"""DSNs and schema names for PostgresBackend, and error messages that never leak a password.

asyncpg's own exceptions may quote the DSN, or pieces of it (a host name that is really part
of an unencoded password, say), so connection failures are reported in messages built here
from the masked DSN and a sanitized reason, never from asyncpg's text as such.
"""

from __future__ import annotations

import errno
import os
import re
import socket
from dataclasses import dataclass
from urllib.parse import quote, unquote

from stent.errors import BackendError

#: An unquoted PostgreSQL identifier (NAMEDATALEN - 1 = 63 bytes at most).
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_ANY_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_PASSWORD_PARAM = re.compile(r"(?i)(^|[?&])(password=)([^&]*)")
_KEYWORD_PASSWORD = re.compile(r"(?i)\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")
_MASK = "***"


def validate_schema(schema: str) -> str:
    """Check a schema name and return it quoted for SQL.

    Args:
        schema: a plain identifier: a letter or underscore, then letters, digits or
            underscores, at most 63 characters.

    Returns:
        The name as a quoted identifier (``"name"``), safe to put into SQL text.

    Raises:
        ValueError: the name is not such an identifier.
    """
    if not isinstance(schema, str) or not _IDENTIFIER.match(schema):
        raise ValueError(
            f"invalid schema name {schema!r}: use letters, digits and underscores, "
            "starting with a letter or underscore (at most 63 characters)"
        )
    return f'"{schema}"'


@dataclass(frozen=True, slots=True)
class Dsn:
    """A DSN as given, with what is needed to talk about it safely.

    Attributes:
        text: the DSN exactly as given (passed to asyncpg, never shown).
        masked: the DSN with its password replaced by ``***``.
        secrets: every form in which the password could appear in a message (as written,
            percent-decoded, percent-encoded), longest first.
        unencoded_userinfo: the user/password part contains a character that must be
            percent-encoded (``@ / # ?``), so no parser can split it reliably.
    """

    text: str
    masked: str
    secrets: tuple[str, ...]
    unencoded_userinfo: bool
    #: what asyncpg is given: a ``postgresql://`` URL (``key=value`` DSNs and
    #: ``postgresql+driver://`` URLs are converted to it)
    url: str = ""

    def scrub(self, message: str) -> str:
        """``message`` with every form of the password replaced by ``***``."""
        for secret in self.secrets:
            message = message.replace(secret, _MASK)
        return message

    def leaks(self, message: str) -> bool:
        """Whether ``message`` contains the password in one of its forms."""
        return any(secret in message for secret in self.secrets)


def parse_dsn(dsn: str) -> Dsn:
    """Work out where the password sits in ``dsn`` (URI or ``key=value`` form).

    In a URI the user information ends at the LAST ``@`` of the DSN, so that a password
    written with unencoded ``@``, ``/``, ``#`` or ``?`` is still masked whole (asyncpg and
    libpq would split it elsewhere; see :attr:`Dsn.unencoded_userinfo`).
    """
    found: list[str] = []
    masked = dsn
    unencoded = False
    url = dsn
    m = _ANY_SCHEME.match(dsn)
    scheme = m.group(0) if m else None
    if scheme is not None:
        rest = dsn[len(scheme):]
        at = rest.rfind("@")
        if at >= 0:
            userinfo, hostpart = rest[:at], rest[at + 1:]
            unencoded = any(ch in userinfo for ch in "@/#?")
            user, colon, password = userinfo.partition(":")
            if colon:
                found.append(password)
                masked = f"{dsn[:len(scheme)]}{user}:{_MASK}@{hostpart}"
        for match in _PASSWORD_PARAM.finditer(dsn):
            found.append(match.group(3))
        masked = _PASSWORD_PARAM.sub(lambda m: m.group(1) + m.group(2) + _MASK, masked)
    else:
        for match in _KEYWORD_PASSWORD.finditer(dsn):
            found.append(match.group(1).strip("'"))
        masked = _KEYWORD_PASSWORD.sub(f"password={_MASK}", dsn)
        try:
            url = _keywords_to_url(dsn)
        except ValueError as exc:
            raise ValueError(f"invalid PostgreSQL DSN {masked!r}: {exc}") from None
    if scheme is not None:
        base = scheme.lower()[:-3].split("+", 1)[0]
        if base not in ("postgresql", "postgres"):
            raise ValueError(
                f"invalid PostgreSQL DSN {masked!r}: expected postgresql://..., "
                "postgres://... or libpq key=value pairs"
            )
        url = "postgresql://" + dsn[len(scheme):]
    variants: set[str] = set()
    for secret in found:
        for form in (secret, unquote(secret), quote(secret, safe=""), quote(unquote(secret),
                                                                            safe="")):
            if form:
                variants.add(form)
    secrets = tuple(sorted(variants, key=len, reverse=True))
    return Dsn(text=dsn, masked=masked, secrets=secrets, unencoded_userinfo=unencoded, url=url)


#: libpq keywords that go into a URL's authority or path rather than its query
_URL_PARTS = {"user", "password", "host", "hostaddr", "port", "dbname"}


def _keywords_to_url(dsn: str) -> str:
    """A libpq ``key=value`` DSN (values optionally single-quoted, ``\\`` escapes) as the
    ``postgresql://`` URL asyncpg reads."""
    pairs: dict[str, str] = {}
    i, n = 0, len(dsn)
    while i < n:
        while i < n and dsn[i].isspace():
            i += 1
        if i >= n:
            break
        eq = dsn.find("=", i)
        if eq < 0:
            raise ValueError("expected key=value pairs")
        key = dsn[i:eq].strip()
        if not key or not key.replace("_", "").isalnum():
            raise ValueError(f"bad keyword {key[:30]!r}")
        i = eq + 1
        while i < n and dsn[i].isspace():
            i += 1
        value: list[str] = []
        if i < n and dsn[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted value")
                ch = dsn[i]
                if ch == "\\" and i + 1 < n:
                    value.append(dsn[i + 1])
                    i += 2
                    continue
                if ch == "'":
                    i += 1
                    break
                value.append(ch)
                i += 1
        else:
            while i < n and not dsn[i].isspace():
                if dsn[i] == "\\" and i + 1 < n:
                    value.append(dsn[i + 1])
                    i += 2
                    continue
                value.append(dsn[i])
                i += 1
        pairs[key] = "".join(value)
    if not pairs:
        raise ValueError("empty DSN")
    auth = ""
    if "user" in pairs:
        auth = quote(pairs["user"], safe="")
        if "password" in pairs:
            auth += ":" + quote(pairs["password"], safe="")
        auth += "@"
    host = pairs.get("host") or pairs.get("hostaddr") or ""
    if host.startswith("/"):  # a Unix socket directory goes into the query
        pairs.setdefault("host", host)
        hostpart = ""
    else:
        hostpart = f"[{host}]" if ":" in host else host
        pairs.pop("host", None)
    if "port" in pairs and hostpart:
        hostpart += ":" + pairs["port"]
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs.items()
                     if k not in _URL_PARTS or (k == "host" and not hostpart))
    path = "/" + quote(pairs["dbname"], safe="") if "dbname" in pairs else ""
    return f"postgresql://{auth}{hostpart}{path}" + (f"?{query}" if query else "")


def connect_error(dsn: Dsn, exc: BaseException) -> BackendError:
    """A :class:`BackendError` for a failure to connect (or authenticate) to ``dsn``.

    The message names the masked DSN and a reason built from the exception's kind. Raise it
    ``from None`` (or outside the ``except`` block): the original exception may quote the
    DSN.
    """
    return BackendError(f"could not connect to PostgreSQL at {dsn.masked}: {_reason(dsn, exc)}")


def query_error(dsn: Dsn, exc: BaseException, *, context: str = "") -> BackendError:
    """A :class:`BackendError` for a failed statement or a lost connection."""
    where = f" ({context})" if context else ""
    return BackendError(f"PostgreSQL at {dsn.masked}{where}: {_reason(dsn, exc)}")


def unencoded_userinfo_error(dsn: Dsn) -> BackendError:
    """The error for a DSN whose user or password needs percent-encoding."""
    return BackendError(
        f"could not connect to PostgreSQL at {dsn.masked}: the user name or password in the "
        "DSN contains '@', '/', '#' or '?' unencoded; percent-encode them "
        "(urllib.parse.quote(password, safe=''))"
    )


def _reason(dsn: Dsn, exc: BaseException) -> str:
    """A short, password-free account of ``exc``."""
    # Imported here so that this module stays importable for messages without asyncpg.
    import asyncpg

    if isinstance(exc, asyncpg.PostgresError):
        # A message from the server: it never contains the password (it may name the user
        # or the database). Scrubbed anyway, in case a password was reused as a name.
        sqlstate = getattr(exc, "sqlstate", None) or "?"
        text = dsn.scrub(str(exc).strip() or type(exc).__name__)
        if "stent_" in text and sqlstate == "42P01":
            text += " (the Stent tables are missing: call init_db() first)"
        return f"{text} [SQLSTATE {sqlstate}]"
    if isinstance(exc, socket.gaierror):
        return "the host name could not be resolved"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        code = exc.errno
        if code is not None and code in errno.errorcode:
            return os.strerror(code)
        # Without an errno the text is asyncpg's (``rejected SSL upgrade``, or ``Multiple
        # exceptions: ...`` when every address of a host failed). It quotes host names,
        # which are pieces of the password when the user information was not encoded.
        text = str(exc)
        if text and not dsn.leaks(text) and not dsn.unencoded_userinfo:
            return text
        return type(exc).__name__
    if isinstance(exc, (asyncpg.InterfaceError, asyncpg.exceptions.ClientConfigurationError,
                        ValueError)):
        text = str(exc)
        if dsn.leaks(text) or dsn.unencoded_userinfo:
            return f"{type(exc).__name__} (details withheld: they quote the DSN)"
        return f"{type(exc).__name__}: {text}"
    text = str(exc)
    if dsn.leaks(text):
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
