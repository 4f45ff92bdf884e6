"""Payload serializers: how arguments, results and errors are turned into bytes.

Two serializers ship with Stent:

* :class:`JsonSerializer` (``"json"``, the default) writes compact UTF-8 JSON and
  round-trips every value it accepts *exactly* (same types, same values), or refuses
  it up front with a :class:`~stent.errors.SerializationError` naming where in the
  payload the bad value sits. Values JSON cannot express natively (tuples, datetimes,
  dataclasses, ...) are written as tagged objects ``{"__stent__": "<tag>", ...}``.
* :class:`PickleSerializer` (``"pickle"``) handles anything picklable. Payloads are
  signed with HMAC-SHA256 and the signature is checked before anything is unpickled.

Errors raised by steps are stored with :func:`encode_error` / :func:`decode_error`,
which rebuild the original exception class when it can be imported and fall back to
:class:`~stent.errors.RemoteError` otherwise.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import hmac
import importlib
import json
import os
import pickle
import sys
import traceback
import uuid
from collections.abc import Callable, Collection, Sequence
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, ClassVar, Final, Protocol, TypeVar, cast, runtime_checkable
from zoneinfo import ZoneInfo

from stent.errors import PayloadTooLargeError, RemoteError, SerializationError
from stent.result import Result

__all__ = [
    "MAX_DEPTH",
    "TAG",
    "JsonSerializer",
    "PickleSerializer",
    "Serializer",
    "check_payload_size",
    "decode_error",
    "dumps_with_path",
    "encode_error",
    "loads_with_path",
    "resolve_serializer",
]

TAG: Final = "__stent__"
"""Key that marks a tagged JSON object. User dicts containing it are written in pair form."""

MAX_DEPTH: Final = 500
"""Deepest nesting the JSON serializer accepts, counted in JSON containers.

A tuple, set, dataclass or Enum costs two levels (the tag object and its payload).
The limit is well below Python's default recursion limit (1000) because the stdlib
JSON encoder and decoder recurse once per level in C and share that budget with the
calling code's own frames; it guarantees that whatever we write can be read back.
"""

_SUPPORTED = (
    "None, bool, int, float, str, list, dict, tuple, set, frozenset, bytes, bytearray, "
    "datetime, date, time, timedelta, Decimal, UUID, Enum members, dataclass instances, "
    "stent.Result"
)

_PICKLE_PROTOCOL: Final = 5  # fixed (not HIGHEST_PROTOCOL) so mixed Python versions can read it
_PICKLE_VERSION: Final = 1
_MAC_SIZE: Final = 32

_PATH_DISPLAY_LIMIT = 300
_REPR_LIMIT = 60
# Ints above this many bits may exceed sys.get_int_max_str_digits() (4300 by default);
# only those are checked, and only on the slow path that looks for the culprit.
_BIG_INT_BITS = 14_000


@runtime_checkable
class Serializer(Protocol):
    """What Stent needs from a payload serializer.

    Any object with these two methods can be passed as ``serializer=``. ``dumps`` must
    return ``bytes``; ``loads(dumps(x))`` should give back a value equal to ``x``.
    """

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` to bytes."""
        ...

    def loads(self, data: bytes) -> Any:
        """Decode bytes produced by :meth:`dumps`."""
        ...


# --------------------------------------------------------------------------- encoding


class _Refusal(Exception):
    """Raised inside the JSON walk; each container on the way out adds its path segment."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segments: list[str] = []  # innermost first


def _short_repr(obj: object) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<{type(obj).__name__} object>"
    if len(text) > _REPR_LIMIT:
        text = text[: _REPR_LIMIT - 3] + "..."
    return text


def _type_label(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _refusal_error(refusal: _Refusal, root: str) -> SerializationError:
    path = root + "".join(reversed(refusal.segments))
    if len(path) > _PATH_DISPLAY_LIMIT:
        keep = _PATH_DISPLAY_LIMIT // 2
        path = f"{path[:keep]}...{path[-keep:]}"
    return SerializationError(f"cannot serialize object at {path}: {refusal.reason}")


def _too_deep() -> _Refusal:
    return _Refusal(
        f"nested more than {MAX_DEPTH} levels deep (or contains a reference cycle); "
        "flatten it or convert it"
    )


def _unsupported(obj: object) -> _Refusal:
    cls = type(obj)
    if isinstance(obj, BaseException):
        return _Refusal(
            f"exception {_type_label(cls)!r} is not supported by the json serializer "
            "except inside a stent Result (Result.Error(exc)); pass str(exc) or use "
            'serializer="pickle"'
        )
    for base in (
        bool,
        int,
        float,
        str,
        bytes,
        list,
        tuple,
        dict,
        set,
        frozenset,
        datetime,
        date,
        time,
        timedelta,
        Decimal,
        uuid.UUID,
    ):
        if isinstance(obj, base):
            return _Refusal(
                f"type {_type_label(cls)!r} (a subclass of {base.__name__}) is not supported "
                f"by the json serializer: it would come back as a plain {base.__name__}; "
                f'use serializer="pickle" or convert it'
            )
    return _Refusal(
        f"type {_type_label(cls)!r} is not supported by the json serializer "
        f'(supported: {_SUPPORTED}); use serializer="pickle" or convert it'
    )


def _check_str(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Refusal(
            f"str contains a lone surrogate {text[exc.start]!r} at index {exc.start}, which "
            "cannot be stored as UTF-8 (was it decoded with errors='surrogateescape'?)"
        ) from None


def _check_int(number: int) -> None:
    if number.bit_length() <= _BIG_INT_BITS:
        return
    try:
        int.__repr__(number)
    except ValueError:
        raise _Refusal(
            f"int with more than sys.get_int_max_str_digits() ({sys.get_int_max_str_digits()}) "
            "digits cannot be written as JSON; pass it as a str or bytes"
        ) from None


def _clean_text(text: str) -> str:
    """Make ``text`` encodable as UTF-8 (error messages may carry surrogate-escaped names)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


# -- class paths ---------------------------------------------------------------------


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _split_path(path: str) -> tuple[str, list[str]]:
    module_name, sep, qualname = path.partition(":")
    parts = qualname.split(".")
    if (
        not sep
        or not all(p.isidentifier() for p in module_name.split("."))
        or not all(p.isidentifier() for p in parts)
    ):
        raise LookupError(f"invalid class path {path!r}: expected 'module:QualName'")
    return module_name, parts


def _lookup(path: str, *, allow_import: bool) -> object:
    """Find the object named by ``module:qualname`` without calling anything but getattr."""
    module_name, parts = _split_path(path)
    found: object = sys.modules.get(module_name)
    if found is None:
        if not allow_import:
            raise LookupError(f"module {module_name!r} is not imported")
        found = importlib.import_module(module_name)
    for part in parts:
        found = getattr(found, part)
    return found


def _importable_path(cls: type) -> str:
    """The class's ``module:qualname``, checked to lead back to the very same class."""
    path = _class_path(cls)
    if "<locals>" in cls.__qualname__:
        raise _Refusal(
            f"class {path!r} is defined inside a function, so it cannot be found again when "
            "decoding; move it to module level"
        )
    try:
        found = _lookup(path, allow_import=False)
    except Exception:
        found = None
    if found is not cls:
        raise _Refusal(
            f"class {_type_label(cls)!r} cannot be found again as {path!r} when decoding; "
            "define it at module level under its own name"
        )
    return path


# Per-class facts for Enum/dataclass encoding, filled only on success.
# Value: (tag, class path, dataclass field names).
_KINDS: dict[type, tuple[str, str, tuple[str, ...]]] = {}


def _classify(obj: object) -> tuple[str, str, tuple[str, ...]]:
    cls = type(obj)
    kind: tuple[str, str, tuple[str, ...]]
    if isinstance(obj, enum.Enum):
        kind = ("enum", _importable_path(cls), ())
    elif dataclasses.is_dataclass(obj):
        names = tuple(f.name for f in dataclasses.fields(obj))
        if TAG in names:
            raise _Refusal(f"dataclass field name {TAG!r} is reserved by the json serializer")
        kind = ("dataclass", _importable_path(cls), names)
    else:
        raise _unsupported(obj)
    _KINDS[cls] = kind
    return kind


# -- leaf encoders (no recursion) ----------------------------------------------------


def _custom_tz_name(tz: timezone) -> str | None:
    """The tz's name if it was given explicitly (the ISO offset does not carry it)."""
    name = tz.tzname(None)
    return None if name == timezone(tz.utcoffset(None)).tzname(None) else name


def _encode_clock(obj: datetime | time, tag: str) -> dict[str, Any]:
    tz = obj.tzinfo
    out: dict[str, Any] = {TAG: tag}
    if tz is None or type(tz) is timezone:
        out["v"] = obj.isoformat()
        if tz is not None:
            name = _custom_tz_name(tz)
            if name is not None:
                out["tzname"] = _clean_text(name)
    elif type(tz) is ZoneInfo and tz.key is not None:
        out["v"] = obj.replace(tzinfo=None).isoformat()
        out["zone"] = tz.key
    else:
        raise _Refusal(
            f"tzinfo of type {_type_label(type(tz))!r} cannot round-trip through JSON; "
            "use datetime.timezone or zoneinfo.ZoneInfo"
        )
    if obj.fold:
        out["fold"] = 1
    return out


def _encode_datetime(obj: datetime) -> dict[str, Any]:
    return _encode_clock(obj, "datetime")


def _encode_time(obj: time) -> dict[str, Any]:
    return _encode_clock(obj, "time")


def _encode_date(obj: date) -> dict[str, Any]:
    return {TAG: "date", "v": obj.isoformat()}


def _encode_timedelta(obj: timedelta) -> dict[str, Any]:
    return {TAG: "timedelta", "v": [obj.days, obj.seconds, obj.microseconds]}


def _encode_decimal(obj: Decimal) -> dict[str, Any]:
    # str() keeps every digit and the exponent: Decimal("1.10") stays "1.10".
    return {TAG: "decimal", "v": str(obj)}


def _encode_uuid(obj: uuid.UUID) -> dict[str, Any]:
    return {TAG: "uuid", "v": str(obj)}


def _encode_bytes(obj: bytes) -> dict[str, Any]:
    return {TAG: "bytes", "v": base64.b64encode(obj).decode("ascii")}


def _encode_bytearray(obj: bytearray) -> dict[str, Any]:
    return {TAG: "bytearray", "v": base64.b64encode(obj).decode("ascii")}


_LEAF_ENCODERS: dict[type, Callable[[Any], Any]] = {
    datetime: _encode_datetime,
    date: _encode_date,
    time: _encode_time,
    timedelta: _encode_timedelta,
    Decimal: _encode_decimal,
    uuid.UUID: _encode_uuid,
    bytes: _encode_bytes,
    bytearray: _encode_bytearray,
}


# -- the walk --------------------------------------------------------------------------

Walker = Callable[[Any, int], Any]


def _make_walker(strict: bool) -> Walker:
    """Build the function that turns a value into a JSON-native tree.

    ``depth`` is the number of JSON containers around the value. The non-strict
    walker is the fast path; the strict one additionally checks every str for lone
    surrogates and every big int for the str-digits limit, and only runs after the
    final ``json`` encoding failed, to name the offending path.
    """

    def walk(obj: Any, depth: int) -> Any:
        # Exact type checks: subclasses would not come back as themselves.
        cls = type(obj)
        if cls is str:
            if strict:
                _check_str(obj)
            return obj
        if cls is int:
            if strict:
                _check_int(obj)
            return obj
        if obj is None or cls is bool:
            return obj
        if cls is float:
            if obj - obj == 0.0:  # false for NaN and +-inf
                return obj
            raise _Refusal("NaN and infinities do not round-trip through JSON")
        if depth >= MAX_DEPTH:
            raise _too_deep()
        if cls is list or cls is tuple:
            inner = depth + 1 if cls is list else depth + 2
            items: list[Any] = []
            try:
                for item in obj:
                    items.append(walk(item, inner))
            except _Refusal as refusal:
                refusal.segments.append(f"[{len(items)}]")
                raise
            return items if cls is list else {TAG: "tuple", "v": items}
        if cls is dict:
            plain = TAG not in obj
            if plain:
                for key in obj:
                    if type(key) is not str:
                        plain = False
                        break
            if plain:
                out: dict[str, Any] = {}
                for key, value in obj.items():
                    if strict:
                        try:
                            _check_str(key)
                        except _Refusal as refusal:
                            refusal.segments.append(f"<key {_short_repr(key)}>")
                            raise
                    try:
                        out[key] = walk(value, depth + 1)
                    except _Refusal as refusal:
                        refusal.segments.append(f"[{_short_repr(key)}]")
                        raise
                return out
            return walk_pairs(obj, depth)
        leaf = _LEAF_ENCODERS.get(cls)
        if leaf is not None:
            return leaf(obj)
        if cls is set or cls is frozenset:
            return walk_set(obj, depth)
        if cls is Result:
            return walk_result(obj, depth)
        kind = _KINDS.get(cls)
        if kind is None:
            kind = _classify(obj)
        tag, path, names = kind
        if tag == "enum":
            try:
                value = walk(obj.value, depth + 2)
            except _Refusal as refusal:
                refusal.segments.append(".value")
                raise
            return {TAG: "enum", "c": path, "v": value}
        fields: dict[str, Any] = {}
        for name in names:
            try:
                try:
                    field_value = getattr(obj, name)
                except AttributeError:
                    raise _Refusal("dataclass field is not set") from None
                fields[name] = walk(field_value, depth + 2)
            except _Refusal as refusal:
                refusal.segments.append(f".{name}")
                raise
        return {TAG: "dataclass", "c": path, "v": fields}

    def walk_pairs(obj: dict[Any, Any], depth: int) -> dict[str, Any]:
        # Non-str keys, or a key equal to TAG: a list of [key, value] pairs keeps both exact.
        pairs: list[list[Any]] = []
        for key, value in obj.items():
            try:
                encoded_key = walk(key, depth + 3)
            except _Refusal as refusal:
                refusal.segments.append(f"<key {_short_repr(key)}>")
                raise
            try:
                pairs.append([encoded_key, walk(value, depth + 3)])
            except _Refusal as refusal:
                refusal.segments.append(f"[{_short_repr(key)}]")
                raise
        return {TAG: "dict", "v": pairs}

    def walk_set(obj: set[Any] | frozenset[Any], depth: int) -> dict[str, Any]:
        items = []
        for item in obj:
            try:
                items.append(walk(item, depth + 2))
            except _Refusal as refusal:
                refusal.segments.append(f"<set item {_short_repr(item)}>")
                raise
        # Set order depends on str hashing, which differs between processes; sorting the
        # encoded items makes equal sets give equal bytes everywhere.
        items.sort(key=_JSON_ENCODER.encode)
        return {TAG: "set" if type(obj) is set else "frozenset", "v": items}

    def walk_result(obj: Result[Any], depth: int) -> dict[str, Any]:
        try:
            value = walk(obj.value, depth + 1)
        except _Refusal as refusal:
            refusal.segments.append(".value")
            raise
        error: object = obj.error  # typed BaseException | None, but not checked at runtime
        if error is not None and not isinstance(error, BaseException):
            bad_error = _Refusal(f"Result.error must be an exception, not {type(error).__name__}")
            bad_error.segments.append(".error")
            raise bad_error
        encoded_error = None if error is None else _error_tree(error, depth + 1)
        return {TAG: "result", "ok": bool(obj.ok), "v": value, "e": encoded_error}

    return walk


# check_circular is off because the walk builds a fresh tree with no cycles (a cyclic
# input is refused by the depth limit before json.dumps sees anything).
_JSON_ENCODER: Final = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=False
)
_walk_fast: Final = _make_walker(strict=False)
_walk_strict: Final = _make_walker(strict=True)


def _encode_tree(obj: Any, path: str) -> bytes:
    try:
        tree = _walk_fast(obj, 0)
    except _Refusal as refusal:
        raise _refusal_error(refusal, path) from None
    except RecursionError:
        raise SerializationError(
            f"cannot serialize object at {path}: nested too deeply for the current call stack"
        ) from None
    try:
        return _JSON_ENCODER.encode(tree).encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError) as exc:
        # A lone surrogate or an over-long int got through the fast walk: walk again,
        # checking those, to say where it is.
        try:
            _walk_strict(obj, 0)
        except _Refusal as refusal:
            raise _refusal_error(refusal, path) from None
        raise SerializationError(f"cannot serialize object at {path}: {exc}") from exc


# -- errors --------------------------------------------------------------------------


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def _traceback_text(exc: BaseException) -> str:
    # A decoded error keeps the traceback of where it was first raised, which is more
    # useful than the frames that merely re-raised it here.
    remote = getattr(exc, "remote_traceback", None)
    if isinstance(remote, str) and remote:
        return remote
    try:
        return "".join(traceback.format_exception(exc))
    except Exception:
        return f"{type(exc).__name__}: {_safe_str(exc)}\n"


def _constructor_args(exc: BaseException) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
    """The args that rebuild ``exc``, and its extra state, the way pickle would."""
    try:
        reduced = exc.__reduce__()
    except Exception:
        reduced = None
    if (
        isinstance(reduced, tuple)
        and len(reduced) >= 2
        and reduced[0] is type(exc)
        and isinstance(reduced[1], tuple)
    ):
        state = reduced[2] if len(reduced) >= 3 and isinstance(reduced[2], dict) else None
        return reduced[1], state
    return exc.args, None


def _error_tree(exc: BaseException, depth: int) -> dict[str, Any]:
    cls = type(exc)
    tree: dict[str, Any] = {
        TAG: "error",
        "type": _clean_text(_class_path(cls)),
        "message": _clean_text(_safe_str(exc)),
        "traceback": _clean_text(_traceback_text(exc)),
    }
    if isinstance(exc, RemoteError):
        tree["remote_type"] = _clean_text(str(exc.type_name))
    if depth >= MAX_DEPTH:
        return tree  # no args: decodes as RemoteError, which is still informative
    args, state = _constructor_args(exc)
    if isinstance(exc, BaseExceptionGroup):
        # Sub-exceptions are errors too, not JSON values; store them as error trees.
        args = (exc.message,)
        tree["group"] = [_error_tree(sub, depth + 2) for sub in exc.exceptions]
    try:
        # The strict walk guarantees the tree encodes, so storing an error never fails.
        tree["args"] = [_walk_strict(arg, depth + 2) for arg in args]
    except (_Refusal, RecursionError):
        pass  # not storable: the error decodes as RemoteError
    if state:
        stored: dict[str, Any] = {}
        for key, value in state.items():
            if type(key) is not str or key in (TAG, "remote_traceback"):
                continue
            try:
                _check_str(key)
                stored[key] = _walk_strict(value, depth + 2)
            except (_Refusal, RecursionError):
                continue  # best effort: skip attributes JSON cannot hold
        if stored:
            tree["state"] = stored
    return tree


def _remote(type_name: str, message: str, remote_traceback: str) -> RemoteError:
    return RemoteError(type_name, message, remote_traceback)


def _decode_error_tree(node: dict[str, Any]) -> BaseException:
    _expect_keys(
        node,
        {"type", "message", "traceback"},
        {"remote_type", "args", "group", "state"},
    )
    type_name = node["type"]
    message = node["message"]
    remote_traceback = node["traceback"]
    if not all(isinstance(v, str) for v in (type_name, message, remote_traceback)):
        raise ValueError("type, message and traceback must be strings")
    args = node.get("args")
    group = node.get("group")
    state = node.get("state")
    if args is not None and not isinstance(args, list):
        raise ValueError("args must be a list")
    if group is not None and (
        not isinstance(group, list) or not all(isinstance(e, BaseException) for e in group)
    ):
        raise ValueError("group must be a list of errors")
    if state is not None and not isinstance(state, dict):
        raise ValueError("state must be an object")

    try:
        cls = _lookup(type_name, allow_import=True)
    except Exception:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, BaseException)) or args is None:
        return _remote(type_name, message, remote_traceback)
    try:
        exc = cls(*args, group) if group is not None else cls(*args)
    except Exception:
        return _remote(type_name, message, remote_traceback)
    for key, value in (state or {}).items():
        try:
            setattr(exc, key, value)
        except Exception:
            continue
    try:
        exc.remote_traceback = remote_traceback  # type: ignore[attr-defined]
    except Exception:
        pass  # e.g. a class with __slots__; the traceback is a nicety
    return exc


def encode_error(exc: BaseException) -> bytes:
    """Encode an exception for storage (as a step or execution error).

    Stores the class path (``module:qualname``), ``str(exc)``, the constructor args
    (those from ``exc.__reduce__()`` when it has the ``(type(exc), args)`` form, else
    ``exc.args``) when the JSON serializer can hold them, the formatted traceback and,
    for :class:`~stent.errors.RemoteError`, the original type name. Never fails for
    an exception: what cannot be stored is left out.

    Args:
        exc: the exception.

    Returns:
        Compact UTF-8 JSON bytes.
    """
    return _JSON_ENCODER.encode(_error_tree(exc, 0)).encode("utf-8")


def decode_error(data: bytes) -> BaseException:
    """Rebuild an exception stored by :func:`encode_error`.

    The original class is imported and called with the stored args. When the class
    cannot be imported, is not an exception class, the args were not storable or the
    constructor fails, a :class:`~stent.errors.RemoteError` carrying the type name,
    message and traceback is returned instead. The result has a ``remote_traceback``
    attribute (str) whenever the class allows it.

    Args:
        data: bytes from :func:`encode_error`.

    Returns:
        The exception (not raised).

    Raises:
        SerializationError: ``data`` is not an encoded error.
    """
    decoded = _decode_json(data)
    if not isinstance(decoded, BaseException):
        raise SerializationError(
            f"payload is not an encoded error (decoded to {type(decoded).__name__})"
        )
    return decoded


# --------------------------------------------------------------------------- decoding


def _expect_keys(
    node: dict[str, Any], required: Collection[str], optional: Collection[str] = ()
) -> None:
    keys = node.keys() - {TAG}
    missing = set(required) - keys
    extra = keys - set(required) - set(optional)
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing {sorted(missing)}")
        if extra:
            problems.append(f"unexpected {sorted(extra)}")
        raise ValueError(", ".join(problems))


def _string_value(node: dict[str, Any], optional: Collection[str] = ()) -> str:
    _expect_keys(node, {"v"}, optional)
    value = node["v"]
    if not isinstance(value, str):
        raise ValueError("'v' must be a string")
    return value


def _list_value(node: dict[str, Any]) -> list[Any]:
    _expect_keys(node, {"v"})
    value = node["v"]
    if not isinstance(value, list):
        raise ValueError("'v' must be a list")
    return value


def _decode_tuple(node: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(_list_value(node))


def _decode_set(node: dict[str, Any]) -> set[Any]:
    return set(_list_value(node))


def _decode_frozenset(node: dict[str, Any]) -> frozenset[Any]:
    return frozenset(_list_value(node))


def _decode_dict(node: dict[str, Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for pair in _list_value(node):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ValueError("dict entries must be [key, value] pairs")
        out[pair[0]] = pair[1]
    return out


def _fold(node: dict[str, Any]) -> int:
    fold = node.get("fold", 0)
    if fold not in (0, 1) or type(fold) is not int:
        raise ValueError("'fold' must be 0 or 1")
    return fold


_Clock = TypeVar("_Clock", datetime, time)


def _decode_datetime(node: dict[str, Any]) -> datetime:
    text = _string_value(node, {"tzname", "zone", "fold"})
    value = datetime.fromisoformat(text)
    return _apply_tz(node, value).replace(fold=_fold(node))


def _decode_time(node: dict[str, Any]) -> time:
    text = _string_value(node, {"tzname", "zone", "fold"})
    value = time.fromisoformat(text)
    return _apply_tz(node, value).replace(fold=_fold(node))


def _apply_tz(node: dict[str, Any], value: _Clock) -> _Clock:
    tzname = node.get("tzname")
    zone = node.get("zone")
    if tzname is not None and zone is not None:
        raise ValueError("'tzname' and 'zone' exclude each other")
    if tzname is not None:
        offset = value.utcoffset()
        if not isinstance(tzname, str) or offset is None:
            raise ValueError("'tzname' needs a string name and a UTC offset")
        return value.replace(tzinfo=timezone(offset, tzname))
    if zone is not None:
        if not isinstance(zone, str) or value.tzinfo is not None:
            raise ValueError("'zone' needs a string key and a naive value")
        return value.replace(tzinfo=ZoneInfo(zone))
    return value


def _decode_date(node: dict[str, Any]) -> date:
    return date.fromisoformat(_string_value(node))


def _decode_timedelta(node: dict[str, Any]) -> timedelta:
    parts = _list_value(node)
    if len(parts) != 3 or not all(type(p) is int for p in parts):
        raise ValueError("'v' must be [days, seconds, microseconds]")
    return timedelta(days=parts[0], seconds=parts[1], microseconds=parts[2])


def _decode_decimal(node: dict[str, Any]) -> Decimal:
    return Decimal(_string_value(node))


def _decode_uuid(node: dict[str, Any]) -> uuid.UUID:
    return uuid.UUID(_string_value(node))


def _decode_bytes(node: dict[str, Any]) -> bytes:
    return base64.b64decode(_string_value(node), validate=True)


def _decode_bytearray(node: dict[str, Any]) -> bytearray:
    return bytearray(base64.b64decode(_string_value(node), validate=True))


# Classes resolved while decoding, keyed by (tag, path); only verified ones are kept.
_RESOLVED: dict[tuple[str, str], type] = {}


def _resolve_class(tag: str, path: object) -> type:
    if not isinstance(path, str):
        raise ValueError("'c' must be a class path string")
    cached = _RESOLVED.get((tag, path))
    if cached is not None:
        return cached
    try:
        found = _lookup(path, allow_import=True)
    except Exception as exc:
        raise SerializationError(
            f"cannot decode {tag} {path!r}: {type(exc).__name__}: {exc}"
        ) from exc
    # Check the payload's claim before using the object: a forged tag naming, say,
    # os:system must never get called.
    if tag == "enum":
        valid = isinstance(found, type) and issubclass(found, enum.Enum)
    else:
        valid = isinstance(found, type) and dataclasses.is_dataclass(found)
    if not valid or not isinstance(found, type):
        raise SerializationError(
            f"cannot decode {tag} {path!r}: it names {_short_repr(found)}, "
            f"which is not {'an Enum class' if tag == 'enum' else 'a dataclass'}"
        )
    _RESOLVED[(tag, path)] = found
    return found


def _decode_enum(node: dict[str, Any]) -> enum.Enum:
    _expect_keys(node, {"c", "v"})
    cls = _resolve_class("enum", node["c"])
    member: enum.Enum = cls(node["v"])
    return member


_FIELD_INITVAR: Final = getattr(dataclasses, "_FIELD_INITVAR", object())


def _calls_init(cls: type) -> bool:
    """Whether ``cls(**fields)`` rebuilds an instance (else fields are set directly)."""
    params = getattr(cls, "__dataclass_params__", None)
    if not getattr(params, "init", True):
        return False
    if not all(f.init for f in dataclasses.fields(cls)):
        return False
    # InitVar pseudo-fields are __init__ parameters that are not stored anywhere.
    all_fields: dict[str, Any] = getattr(cls, "__dataclass_fields__", {})
    return not any(getattr(f, "_field_type", None) is _FIELD_INITVAR for f in all_fields.values())


def _decode_dataclass(node: dict[str, Any]) -> Any:
    _expect_keys(node, {"c", "v"})
    cls = _resolve_class("dataclass", node["c"])
    values = node["v"]
    if not isinstance(values, dict):
        raise ValueError("'v' must be an object of fields")
    if _calls_init(cls):
        return cls(**values)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = values.keys() - fields.keys()
    if unknown:
        raise ValueError(f"{_class_path(cls)} has no fields {sorted(unknown)}")
    # Bypass __init__: it cannot take the init=False/InitVar fields we have.
    instance = cast(Any, cls).__new__(cls)
    for name, field in fields.items():
        if name in values:
            value = values[name]
        elif field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            raise ValueError(f"field {name!r} of {_class_path(cls)} is missing")
        # object.__setattr__ also works for frozen dataclasses.
        object.__setattr__(instance, name, value)
    return instance


def _decode_result(node: dict[str, Any]) -> Result[Any]:
    _expect_keys(node, {"ok", "v", "e"})
    ok, value, error = node["ok"], node["v"], node["e"]
    if type(ok) is not bool:
        raise ValueError("'ok' must be a bool")
    if error is not None and not isinstance(error, BaseException):
        raise ValueError("'e' must be an encoded error or null")
    return Result(ok, value, error)


_DECODERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "tuple": _decode_tuple,
    "set": _decode_set,
    "frozenset": _decode_frozenset,
    "dict": _decode_dict,
    "datetime": _decode_datetime,
    "date": _decode_date,
    "time": _decode_time,
    "timedelta": _decode_timedelta,
    "decimal": _decode_decimal,
    "uuid": _decode_uuid,
    "bytes": _decode_bytes,
    "bytearray": _decode_bytearray,
    "enum": _decode_enum,
    "dataclass": _decode_dataclass,
    "result": _decode_result,
    "error": _decode_error_tree,
}


def _object_hook(node: dict[str, Any]) -> Any:
    # json calls this bottom-up for every object, so tagged values are rebuilt without
    # any recursion of our own.
    if TAG not in node:
        return node
    tag = node[TAG]
    decoder = _DECODERS.get(tag) if isinstance(tag, str) else None
    if decoder is None:
        raise SerializationError(f"cannot decode payload: unknown tag {_short_repr(tag)}")
    try:
        return decoder(node)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"cannot decode payload: malformed {tag!r} value ({type(exc).__name__}: {exc})"
        ) from exc


def _refuse_constant(name: str) -> Any:
    raise SerializationError(f"cannot decode payload: {name} is not allowed")


_JSON_DECODER: Final = json.JSONDecoder(object_hook=_object_hook, parse_constant=_refuse_constant)


def _decode_json(data: bytes | bytearray | memoryview | str) -> Any:
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SerializationError(f"cannot decode payload: not UTF-8 ({exc})") from None
    try:
        return _JSON_DECODER.decode(text)
    except SerializationError:
        raise
    except RecursionError:
        raise SerializationError("cannot decode payload: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or an int over the str-digits limit
        raise SerializationError(f"cannot decode payload: {exc}") from None


# ------------------------------------------------------------------------ serializers


class JsonSerializer:
    """Exact-round-trip JSON serializer (``serializer="json"``, the default).

    Accepts None, bool, int, float (finite), str (no lone surrogates), list, dict (any
    hashable supported keys), tuple, set, frozenset, bytes, bytearray, datetime, date,
    time (naive, ``datetime.timezone`` or ``zoneinfo.ZoneInfo``), timedelta, Decimal,
    UUID, Enum members and dataclass instances of module-level classes, and
    :class:`~stent.result.Result`. Exact types only: subclasses (other than Enum
    members) are refused, because they would come back as their base type. Nesting is
    limited to :data:`MAX_DEPTH` JSON levels.
    """

    name: ClassVar[str] = "json"

    def dumps(self, obj: Any, *, path: str = "value") -> bytes:
        """Encode ``obj`` as compact UTF-8 JSON.

        Args:
            obj: the value.
            path: how to name the root in error messages, e.g. ``"args"``.

        Returns:
            The encoded bytes.

        Raises:
            SerializationError: something in ``obj`` would not come back exactly; the
                message names its path, e.g. ``args[1]['conn']``.
        """
        return _encode_tree(obj, path)

    def loads(self, data: bytes | bytearray | memoryview | str) -> Any:
        """Decode bytes written by :meth:`dumps`.

        Args:
            data: the bytes (a ``str`` of JSON text is accepted too).

        Returns:
            The value.

        Raises:
            SerializationError: invalid JSON, a malformed tag, a tag naming a class
                that cannot be imported or is not what the tag claims, or nesting too
                deep.
        """
        return _decode_json(data)

    def __repr__(self) -> str:
        return "JsonSerializer()"


def _normalize_keys(keys: bytes | str | Sequence[bytes | str]) -> tuple[bytes, ...]:
    candidates: Sequence[object] = (
        [keys] if isinstance(keys, bytes | bytearray | str) else list(keys)
    )
    if not candidates:
        raise ValueError("PickleSerializer needs at least one signing key")
    normalized: list[bytes] = []
    for key in candidates:
        if isinstance(key, str):
            key = key.encode("utf-8")
        if not isinstance(key, bytes | bytearray):
            raise TypeError(f"pickle signing keys must be bytes or str, not {type(key).__name__}")
        if not key:
            raise ValueError("pickle signing keys must not be empty")
        normalized.append(bytes(key))
    return tuple(normalized)


class PickleSerializer:
    """Pickle serializer with HMAC-SHA256-signed payloads (``serializer="pickle"``).

    Unpickling runs code named by the payload, so a payload is only unpickled after its
    signature has been verified. Payload layout: one version byte (1), the 32-byte
    HMAC-SHA256 of the pickle bytes, the pickle bytes (protocol 5).

    Args:
        keys: the signing key, or several for rotation: the first signs new payloads,
            all of them are accepted when verifying. ``str`` keys are UTF-8 encoded.

    Raises:
        ValueError: no keys, or an empty key.
    """

    name: ClassVar[str] = "pickle"

    def __init__(self, keys: bytes | str | Sequence[bytes | str]) -> None:
        self._keys = _normalize_keys(keys)

    def __repr__(self) -> str:
        return f"PickleSerializer(<{len(self._keys)} key{'s' if len(self._keys) != 1 else ''}>)"

    def _mac(self, key: bytes, body: bytes | memoryview) -> bytes:
        return hmac.new(key, body, hashlib.sha256).digest()

    def dumps(self, obj: Any, *, path: str = "value") -> bytes:
        """Pickle and sign ``obj``.

        Args:
            obj: the value.
            path: how to name the root in error messages, e.g. ``"args"``.

        Returns:
            The signed payload.

        Raises:
            SerializationError: ``obj`` cannot be pickled.
        """
        try:
            body = pickle.dumps(obj, protocol=_PICKLE_PROTOCOL)
        except Exception as exc:
            raise SerializationError(f"cannot pickle {path}: {type(exc).__name__}: {exc}") from exc
        return bytes([_PICKLE_VERSION]) + self._mac(self._keys[0], body) + body

    def loads(self, data: bytes) -> Any:
        """Verify the signature of ``data``, then unpickle it.

        Args:
            data: a payload from :meth:`dumps` (signed with any configured key).

        Returns:
            The value.

        Raises:
            SerializationError: the signature is missing or wrong (nothing is
                unpickled), or unpickling fails.
        """
        view = memoryview(data)
        if len(view) < 1 + _MAC_SIZE or view[0] != _PICKLE_VERSION:
            raise SerializationError(
                "pickled payload signature mismatch: refusing to unpickle a payload that is "
                "too short or has an unknown format version"
            )
        mac = view[1 : 1 + _MAC_SIZE]
        body = view[1 + _MAC_SIZE :]
        if not any(hmac.compare_digest(mac, self._mac(key, body)) for key in self._keys):
            raise SerializationError(
                "pickled payload signature mismatch: refusing to unpickle data not signed by "
                "any configured key (was it written with a different pickle key, or altered?)"
            )
        try:
            return pickle.loads(body)
        except Exception as exc:
            raise SerializationError(
                f"cannot unpickle payload: {type(exc).__name__}: {exc}"
            ) from exc


# --------------------------------------------------------------------------- helpers


def resolve_serializer(
    spec: str | Serializer,
    *,
    pickle_key: bytes | str | Sequence[bytes | str] | None = None,
) -> Serializer:
    """Turn a ``serializer=`` argument into a serializer object.

    Args:
        spec: ``"json"``, ``"pickle"`` or an object with ``dumps()``/``loads()``
            (returned unchanged; call it through :func:`dumps_with_path`).
        pickle_key: signing key(s) for ``"pickle"``; defaults to the environment
            variable ``STENT_PICKLE_KEY`` (comma-separated for rotation, first signs).

    Returns:
        The serializer.

    Raises:
        ValueError: unknown name, or ``"pickle"`` without any signing key.
        TypeError: ``spec`` is neither a name nor a serializer object.
    """
    if isinstance(spec, str):
        if spec == "json":
            return JsonSerializer()
        if spec == "pickle":
            if pickle_key is None:
                env = os.environ.get("STENT_PICKLE_KEY", "")
                parts = [part.strip() for part in env.split(",") if part.strip()]
                if not parts:
                    raise ValueError(
                        'serializer="pickle" needs a signing key, because unpickling '
                        "unsigned data can run arbitrary code: pass pickle_key=... or set "
                        "the STENT_PICKLE_KEY environment variable (comma-separated keys "
                        "for rotation; the first one signs)"
                    )
                return PickleSerializer(parts)
            return PickleSerializer(pickle_key)
        raise ValueError(
            f"unknown serializer {spec!r}: expected 'json', 'pickle' or an object with "
            "dumps()/loads()"
        )
    if isinstance(spec, type):
        raise TypeError(
            f"serializer must be an instance, not the class {spec.__name__}; "
            f"pass {spec.__name__}(...)"
        )
    if callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None)):
        return spec
    raise TypeError(
        f"serializer must be 'json', 'pickle' or an object with dumps()/loads(), "
        f"not {type(spec).__name__}"
    )


def dumps_with_path(serializer: Serializer, obj: Any, path: str) -> bytes:
    """Encode ``obj`` with any serializer, naming ``path`` if it fails.

    Stent's own serializers get ``path=`` so their messages point inside the value.
    User serializers are called as ``dumps(obj)``; their exceptions (other than
    SerializationError) are wrapped in SerializationError naming ``path``.

    Args:
        serializer: the serializer.
        obj: the value.
        path: root label for messages, e.g. ``"args"`` or ``"result"``.

    Returns:
        The encoded bytes.

    Raises:
        SerializationError: encoding failed, or a user serializer did not return bytes.
    """
    if isinstance(serializer, JsonSerializer | PickleSerializer):
        return serializer.dumps(obj, path=path)
    try:
        data: object = serializer.dumps(obj)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {path} with {type(serializer).__name__}: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise SerializationError(
        f"cannot serialize {path}: {type(serializer).__name__}.dumps() returned "
        f"{type(data).__name__}, expected bytes"
    )


def loads_with_path(serializer: Serializer, data: bytes, path: str) -> Any:
    """Decode ``data`` with any serializer, naming ``path`` if it fails.

    Args:
        serializer: the serializer.
        data: the encoded bytes.
        path: label for messages, e.g. ``"args"`` or ``"result"``.

    Returns:
        The decoded value.

    Raises:
        SerializationError: decoding failed (user serializers' exceptions are wrapped).
    """
    try:
        return serializer.loads(data)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"cannot deserialize {path} with {type(serializer).__name__}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def check_payload_size(data: bytes, limit: int, what: str) -> None:
    """Refuse a payload larger than ``limit`` bytes.

    Args:
        data: the encoded payload.
        limit: the maximum size in bytes (``max_payload_bytes``).
        what: what the payload is, for the message, e.g. ``"args of 'charge'"``.

    Raises:
        PayloadTooLargeError: ``len(data) > limit``.
    """
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"{what} is {len(data)} bytes encoded, over max_payload_bytes={limit}"
        )
