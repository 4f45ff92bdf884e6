"""A corpus of hostile strings for SQL-injection tests: quotes, comments, stacked statements,
LIKE wildcards, backslashes, dollar quoting, Unicode look-alikes and controls.

``CORPUS`` holds strings every database driver can bind; ``NUL_CORPUS`` holds strings with a
NUL character (SQLite stores them; PostgreSQL text cannot hold them at all) and lone
surrogates (no UTF-8 encoding), which the engine must refuse or treat as unknown.
"""

from __future__ import annotations

import re

#: the ids of the legitimate rows the tests seed; hostile strings are built around them
LEGIT_ID = "order-1"

_BASE = [
    "'", '"', "`", "''", '""', "\\", "\\'", "\\\\", "\\\"", "'\\", "\\0", "\\x00", "\\u0000",
    "' OR '1'='1", "' OR 1=1 --", "' OR 1=1 #", "\" OR \"\"=\"", "') OR ('1'='1",
    "1' OR '1'='1' /*", "' OR ''='", "admin'--", "x' AND 1=0 UNION SELECT NULL --",
    "'; DROP TABLE stent_tasks; --", "'; DROP TABLE stent_executions CASCADE; --",
    "\"; DROP TABLE stent_dead_letters; --", "'); DELETE FROM stent_tasks; --",
    "1; DROP SCHEMA public CASCADE", "'; TRUNCATE stent_executions; --",
    "'; UPDATE stent_tasks SET state='completed'; --", "'; INSERT INTO stent_tasks DEFAULT VALUES; --",
    "' UNION SELECT * FROM stent_tasks --", "' UNION ALL SELECT id FROM stent_executions --",
    "'||(SELECT version())||'", "' || pg_sleep(5) || '", "'; SELECT pg_sleep(5); --",
    "1) OR pg_sleep(5)--", "'; COPY stent_tasks TO '/tmp/x'; --", "'; ATTACH DATABASE '/tmp/x' AS x; --",
    "'; PRAGMA writable_schema=1; --", "'; VACUUM; --", "'; BEGIN; --", "'; COMMIT; --",
    "'; ROLLBACK; --", "'; SET search_path TO public; --", "'; RESET ALL; --",
    "$1", "$2", "$$", "$$; DROP TABLE stent_tasks; $$", "$tag$x$tag$", "?", "?1", ":name",
    "@name", "%s", "%(name)s", "{0}", "{schema}", "${x}",
    "/*", "*/", "/* comment */", "-- comment", "--", "#", ";", ";;", "; --",
    "%", "%%", "_", "__", "%_%", "_%", "%_", "[%]", "[_]", "\\%", "\\_", "*", ".*", "^$",
    "E'\\x41'", "U&'\\0041'", "e'\\''", "B'0101'", "X'41'", "x'00'", "N'x'",
    "NULL", "null", "None", "true", "1", "0", "-1", "1e309", "NaN",
    "\n", "\r\n", "\t", "\x0b", "\x0c", "\x1a", "\x1b[31m", "\x7f", " ", "  ", "\u00a0",
    "é", "e\u0301", "Ω", "漢字", "🙂", "👨‍👩‍👧", "\u200b", "\u200d", "\u202e", "\ufeff",
    "\uff07", "\u02bc", "\u2019", "\u2018", "\uff02", "\u201c", "\uff05", "\uff3f", "\uff1b",
    "\ufe68", "\u2215", "\u0130", "\u0131", "ﬀ", "ǅ", "Å", "Å",
    "a" * 199, "a" * 200, "a" * 201, "'" * 200, "%" * 300, "x" * 10_000,
    "<script>alert(1)</script>", "${jndi:ldap://x}", "../../etc/passwd", "file:///etc/passwd",
    "stent_tasks", "stent_executions", "pg_catalog.pg_class", "sqlite_master",
]


def _variants(base: list[str]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()

    def add(s: str) -> None:
        if s and s not in seen:
            seen.add(s)
            out.append(s)

    for s in base:
        add(s)
    for s in base[:80]:
        add(LEGIT_ID + s)  # the legit id with something appended
        add(s + LEGIT_ID)
    for s in ("%", "_", "'", "\\", " ", "\t", "\n", "*", "?", "\u200b"):
        add(LEGIT_ID.replace("-", s))
        add(LEGIT_ID[:-1] + s)
        add(s + LEGIT_ID[1:])
    # the legit id in other case, width, normalization, with spaces or a trailing dot
    for s in (LEGIT_ID.upper(), LEGIT_ID.title(), " " + LEGIT_ID, LEGIT_ID + " ",
              LEGIT_ID + "\n", LEGIT_ID + ".", "\uff4f\uff52\uff44\uff45\uff52-\uff11", "order\u20111", "order\u22121",
              "_" * len(LEGIT_ID), "%" + LEGIT_ID[3:]):
        add(s)
    return out


CORPUS: list[str] = _variants(_BASE)

NUL_CORPUS: list[str] = [
    "\x00", "a\x00b", LEGIT_ID + "\x00", "\x00" + LEGIT_ID, "order\x00-1", "'\x00; DROP TABLE x",
    "%\x00", "\x00%",
]
SURROGATE_CORPUS: list[str] = ["\ud800", "a\udc80b", LEGIT_ID + "\udfff", "\udcff%"]

NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")


def valid_name(s: str) -> bool:
    """Whether ``s`` is a legal queue, tag or signal name (SPEC §9)."""
    return NAME.fullmatch(s) is not None
