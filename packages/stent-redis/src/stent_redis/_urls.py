"""Printable Redis URLs: the password never reaches a log line or an exception message."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"

#: query parameters that redis-py reads as credentials
_SECRET_PARAMS = frozenset({"password"})


def mask_url(url: str) -> str:
    """``url`` with its password (in the userinfo or a ``password=`` parameter) replaced.

    Args:
        url: a ``redis://``, ``rediss://`` or ``unix://`` URL.

    Returns:
        The same URL with ``***`` where the password was; a URL that cannot be parsed comes
        back as ``<unparsable Redis URL>`` rather than risk printing a secret.
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            userinfo, _, hostport = netloc.rpartition("@")
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{MASK}@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(k in _SECRET_PARAMS for k, _ in pairs):
                query = urlencode([(k, MASK if k in _SECRET_PARAMS else v) for k, v in pairs],
                                  safe="*")
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "<unparsable Redis URL>"


def secrets_of(url: str) -> tuple[str, ...]:
    """Every spelling of the password(s) in ``url`` (raw, percent-decoded and re-encoded),
    longest first, for :func:`scrub`."""
    found: set[str] = set()
    try:
        parts = urlsplit(url)
        raw = [parts.password or ""]
        raw += [v for k, v in parse_qsl(parts.query, keep_blank_values=True)
                if k in _SECRET_PARAMS]
    except ValueError:
        return ()
    for secret in raw:
        if secret:
            found.update({secret, unquote(secret), quote(unquote(secret), safe="")})
    return tuple(sorted(found - {""}, key=len, reverse=True))


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every occurrence of every secret replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text
