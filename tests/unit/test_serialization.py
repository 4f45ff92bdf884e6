"""Tests for stent.serialization: the JSON and pickle serializers and error encoding."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import pickle
import timeit
import uuid
from collections import OrderedDict
from dataclasses import InitVar, dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from stent.errors import (
    PayloadTooLargeError,
    RemoteError,
    SerializationError,
    UnregisteredFunctionError,
)
from stent.result import Result
from stent.serialization import (
    MAX_DEPTH,
    TAG,
    JsonSerializer,
    PickleSerializer,
    Serializer,
    check_payload_size,
    decode_error,
    dumps_with_path,
    encode_error,
    loads_with_path,
    resolve_serializer,
)

# ----------------------------------------------------------------- module-level types


class Color(enum.Enum):
    RED = "red"
    GREEN = (1, 2)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Mode(enum.StrEnum):
    FAST = "fast"


class Perm(enum.Flag):
    R = 4
    W = 2
    X = 1


@dataclass
class Point:
    x: int
    y: int


@dataclass(frozen=True)
class Event:
    name: str
    at: datetime
    coords: tuple[int, ...]


@dataclass
class Wrapper:
    inner: Point
    items: list[Event]
    tags: dict[str, Any] = field(default_factory=dict)


@dataclass
class WithComputed:
    a: int
    doubled: int = field(init=False)

    def __post_init__(self) -> None:
        self.doubled = self.a * 2


@dataclass(slots=True, frozen=True)
class Slotted:
    a: int
    b: str


@dataclass
class WithInitVar:
    a: int
    scale: InitVar[int] = 1

    def __post_init__(self, scale: int) -> None:
        self.a *= scale


@dataclass
class Box:
    item: Any


class MyInt(int):
    pass


class MyStr(str):
    pass


class CustomError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


class KeywordOnlyError(Exception):
    def __init__(self, *, code: int) -> None:
        super().__init__(f"code {code}")


class WeirdTz(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=1)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "WEIRD"


# --------------------------------------------------------------------------- helpers


def assert_identical(a: Any, b: Any) -> None:
    """Same type and same value, all the way down (== alone lets 1 == True == 1.0 pass)."""
    assert type(a) is type(b), f"{type(a)!r} != {type(b)!r}"
    if isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_identical(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            assert_identical(ka, kb)
            assert_identical(va, vb)
    elif isinstance(a, datetime | time):
        assert a == b
        assert a.tzinfo == b.tzinfo
        assert (a.tzinfo and a.tzinfo.tzname(None)) == (b.tzinfo and b.tzinfo.tzname(None))
        assert a.fold == b.fold
        assert a.isoformat() == b.isoformat()
    elif isinstance(a, Decimal):
        assert str(a) == str(b)
    elif isinstance(a, Result):
        assert a.ok == b.ok
        assert_identical(a.value, b.value)
        assert type(a.error) is type(b.error)
        assert getattr(a.error, "args", None) == getattr(b.error, "args", None)
    elif dataclasses.is_dataclass(a):
        for f in dataclasses.fields(a):
            assert_identical(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, float):
        assert repr(a) == repr(b)
    else:
        assert a == b


json_serializer = JsonSerializer()


def roundtrip(value: Any) -> Any:
    return json_serializer.loads(json_serializer.dumps(value))


def refusal(value: Any, path: str = "args") -> str:
    with pytest.raises(SerializationError) as info:
        json_serializer.dumps(value, path=path)
    return str(info.value)


# ------------------------------------------------------------------- JSON round trips

PLUS_0530 = timezone(timedelta(hours=5, minutes=30))
ODD_OFFSET = timezone(-timedelta(hours=3, minutes=7, seconds=5, microseconds=12))

ROUND_TRIPS: list[tuple[str, Any]] = [
    ("none", None),
    ("true", True),
    ("false", False),
    ("zero", 0),
    ("negative int", -17),
    ("big int", 2**200),
    ("float", 1.5),
    ("negative zero", -0.0),
    ("huge float", 1e308),
    ("tiny float", 5e-324),
    ("empty str", ""),
    ("unicode str", "héllo ☃ 𝄞"),
    ("nul in str", "a\x00b"),
    ("empty list", []),
    ("list", [1, "a", None, True]),
    ("empty dict", {}),
    ("dict", {"a": 1, "b": [2.5]}),
    ("empty tuple", ()),
    ("tuple", (1, 2)),
    ("nested tuples in dicts in lists", [{"k": (1, (2, (3,)))}, ({"x": ()},)]),
    ("bool in tuple stays bool", (True, 1, 1.0)),
    ("naive datetime", datetime(2024, 2, 29, 13, 45, 1, 123456)),
    ("utc datetime", datetime(2024, 1, 1, tzinfo=UTC)),
    ("+05:30 datetime", datetime(2024, 1, 1, 8, 30, tzinfo=PLUS_0530)),
    ("odd offset datetime", datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=ODD_OFFSET)),
    ("named tz datetime", datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=1), "CET"))),
    ("zoneinfo datetime", datetime(2024, 7, 1, 12, tzinfo=ZoneInfo("Europe/Paris"))),
    ("fold datetime", datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris"))),
    ("naive fold datetime", datetime(2024, 1, 1, fold=1)),
    ("date", date(2024, 2, 29)),
    ("naive time", time(23, 59, 59, 1)),
    ("aware time", time(8, 0, tzinfo=PLUS_0530)),
    ("timedelta", timedelta(days=3, seconds=5, microseconds=7)),
    ("negative timedelta", timedelta(microseconds=-1)),
    ("decimal keeps digits", Decimal("1.10")),
    ("decimal negative zero", Decimal("-0.00")),
    ("decimal exponent", Decimal("1E+3")),
    ("decimal infinity", Decimal("-Infinity")),
    ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("bytes all values", bytes(range(256))),
    ("empty bytes", b""),
    ("bytearray", bytearray(b"\x00\xff")),
    ("set", {1, "a", (2, 3)}),
    ("frozenset", frozenset({1, 2})),
    ("empty set", set()),
    ("dict with int and tuple keys", {1: "a", (1, 2): "b", "s": "c"}),
    ("dict with odd keys", {None: 1, 2.5: 2, frozenset({1}): 3, date(2024, 1, 1): 4}),
    ("dict containing tag key", {TAG: "tuple", "v": [1, 2]}),
    ("dict with only tag key", {TAG: 1}),
    ("enum", Color.RED),
    ("enum with tuple value", Color.GREEN),
    ("int enum", Level.HIGH),
    ("str enum", Mode.FAST),
    ("flag combination", Perm.R | Perm.W),
    ("dataclass", Point(1, 2)),
    ("frozen dataclass with tuple and datetime", Event("e", datetime(2024, 1, 1), (1, 2))),
    (
        "nested dataclasses",
        Wrapper(Point(0, 0), [Event("a", datetime(2024, 1, 1, tzinfo=UTC), ())]),
    ),
    ("dataclass with init=False field", WithComputed(3)),
    ("slots dataclass", Slotted(1, "b")),
    ("dataclass with InitVar", WithInitVar(4, 3)),
    ("dataclass holding tag-key dict", Box({TAG: "x"})),
    ("ok result", Result.Ok((1, 2))),
    ("ok result none", Result.Ok()),
    ("error result", Result.Error(ValueError("boom"))),
    ("result in tuple", (Result.Ok({"a": Decimal("2.50")}),)),
]


@pytest.mark.parametrize(("label", "value"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_json_round_trip_keeps_type_and_value(label: str, value: Any) -> None:
    assert_identical(roundtrip(value), value)


def test_enum_decodes_to_the_same_member_object() -> None:
    assert roundtrip(Color.RED) is Color.RED
    assert roundtrip(Level.LOW) is Level.LOW


def test_decimal_keeps_trailing_zero() -> None:
    assert str(roundtrip(Decimal("1.10"))) == "1.10"


def test_decimal_nan_round_trips() -> None:
    assert roundtrip(Decimal("NaN")).is_nan()


def test_init_false_field_keeps_stored_value_without_calling_init() -> None:
    value = WithComputed(3)
    value.doubled = 100  # differs from what __post_init__ would compute
    decoded = roundtrip(value)
    assert decoded.doubled == 100


def test_initvar_dataclass_is_not_rescaled_on_decode() -> None:
    decoded = roundtrip(WithInitVar(4, 3))
    assert decoded.a == 12


def test_frozen_dataclass_stays_frozen() -> None:
    decoded = roundtrip(Slotted(1, "b"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.a = 2


def test_error_result_keeps_error_type_and_args() -> None:
    decoded = roundtrip(Result.Error(KeyError("missing")))
    assert isinstance(decoded.error, KeyError)
    assert decoded.error.args == ("missing",)
    assert decoded == Result.Error(KeyError("missing"))


def test_output_is_compact_utf8_json() -> None:
    data = json_serializer.dumps({"a": [1, 2], "é": "☃"})
    assert data == '{"a":[1,2],"é":"☃"}'.encode()


def test_plain_values_stay_plain_json() -> None:
    value = {"a": [1, 2.5, None, True, "x"]}
    assert json.loads(json_serializer.dumps(value)) == value


def test_equal_sets_encode_to_equal_bytes() -> None:
    words = [f"w{i}" for i in range(50)]
    assert json_serializer.dumps(set(words)) == json_serializer.dumps(set(reversed(words)))


def test_nesting_below_the_limit_round_trips() -> None:
    value: Any = "leaf"
    for _ in range(MAX_DEPTH - 10):
        value = [value]
    assert roundtrip(value) == value


def test_loads_accepts_str() -> None:
    assert json_serializer.loads('{"__stent__":"tuple","v":[1]}') == (1,)


def test_json_serializer_matches_the_protocol() -> None:
    assert isinstance(JsonSerializer(), Serializer)
    assert JsonSerializer.name == "json"


def test_encoding_small_values_takes_microseconds() -> None:
    for value in [(1, 2), ({"a": [1, 2, 3]},)]:
        runs = 2000
        seconds = min(timeit.repeat(lambda: json_serializer.dumps(value), number=runs))  # noqa: B023
        assert seconds / runs < 50e-6  # ~2-3us on a laptop; generous for slow CI


# ------------------------------------------------------------------- JSON refusals


def test_unsupported_type_error_names_path_and_suggests_pickle() -> None:
    message = refusal(("x", {"conn": object()}))
    assert message.startswith(
        "cannot serialize object at args[1]['conn']: type 'object' is not supported by the "
        "json serializer (supported: "
    )
    assert message.endswith('; use serializer="pickle" or convert it')


def test_nan_error_names_path() -> None:
    assert refusal((float("nan"),)) == (
        "cannot serialize object at args[0]: NaN and infinities do not round-trip through JSON"
    )


def test_default_root_label_is_value() -> None:
    with pytest.raises(SerializationError, match=r"at value\[0\]"):
        json_serializer.dumps([object()])


def _local_dataclass() -> Any:
    @dataclass
    class Local:
        a: int

    return Local(1)


def _local_enum() -> Any:
    class LocalEnum(enum.Enum):
        A = 1

    return LocalEnum.A


REFUSALS: list[tuple[str, Any, str, str]] = [
    ("positive infinity", {"a": float("inf")}, "args['a']", "NaN and infinities"),
    ("negative infinity", [1, [float("-inf")]], "args[1][0]", "NaN and infinities"),
    ("nan in tuple in dict", {"k": (1, float("nan"))}, "args['k'][1]", "NaN"),
    ("int subclass", [MyInt(3)], "args[0]", "a subclass of int"),
    ("str subclass", {"s": MyStr("x")}, "args['s']", "a subclass of str"),
    ("dict subclass", OrderedDict(a=1), "args:", "a subclass of dict"),
    ("custom tzinfo", [datetime(2024, 1, 1, tzinfo=WeirdTz())], "args[0]", "tzinfo"),
    ("local dataclass", [_local_dataclass()], "args[0]", "defined inside a function"),
    ("local enum", [_local_enum()], "args[0]", "defined inside a function"),
    ("dataclass field", Box(item=object()), "args.item", "type 'object'"),
    (
        "nested dataclass field",
        [Wrapper(Point(0, 0), [Box(object())])],  # type: ignore[list-item]
        "args[0].items[0].item",
        "type 'object'",
    ),
    ("dict key", {object(): 1}, "args<key <object object", "type 'object'"),
    ("value under non-str key", {1: object()}, "args[1]", "type 'object'"),
    ("set item", {1, frozenset({object()})}, "args<set item frozenset", "type 'object'"),
    ("lone surrogate", ["ok", "bad\udc80"], "args[1]", "lone surrogate '\\udc80' at index 3"),
    ("lone surrogate in key", {"k\ud800": 1}, "args<key", "lone surrogate"),
    ("surrogate deep", {"a": [Box("\udfff")]}, "args['a'][0].item", "lone surrogate"),
    ("bare exception", [ValueError("x")], "args[0]", "inside a stent Result"),
    ("huge int", [10**5000], "args[0]", "get_int_max_str_digits"),
    ("result value", Result.Ok(object()), "args.value", "type 'object'"),
    ("function", [print], "args[0]", "not supported"),
    ("complex", 1j, "args:", "type 'complex'"),
]


@pytest.mark.parametrize(
    ("label", "value", "path", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_refusal_names_path_and_reason(label: str, value: Any, path: str, reason: str) -> None:
    message = refusal(value)
    assert f"at {path}" in message
    assert reason in message


def test_cyclic_list_is_refused_cleanly() -> None:
    value: list[Any] = [1]
    value.append(value)
    assert "reference cycle" in refusal(value)


@pytest.mark.parametrize("container", ["list", "dict", "tuple"])
def test_ten_thousand_deep_nesting_is_refused_without_recursion_error(container: str) -> None:
    value: Any = 1
    for _ in range(10_000):
        value = (
            [value] if container == "list" else {"k": value} if container == "dict" else (value,)
        )
    message = refusal(value)
    assert f"nested more than {MAX_DEPTH} levels deep" in message


def test_deep_json_input_is_refused_on_decode() -> None:
    with pytest.raises(SerializationError, match="nested too deeply"):
        json_serializer.loads(b"[" * 10_000 + b"]" * 10_000)


def test_deep_tagged_input_is_refused_on_decode() -> None:
    data = '{"__stent__":"tuple","v":[' * 10_000 + "]}" * 10_000
    with pytest.raises(SerializationError, match="nested too deeply"):
        json_serializer.loads(data.encode())


def test_forged_dataclass_tag_naming_a_function_is_refused_and_not_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append((a, k)))
    payload = json.dumps({TAG: "dataclass", "c": "os:system", "v": {"command": "echo hi"}})
    with pytest.raises(SerializationError, match="not a dataclass"):
        json_serializer.loads(payload.encode())
    assert calls == []


FORGED: list[tuple[str, Any]] = [
    ("enum naming a dataclass", {TAG: "enum", "c": f"{__name__}:Point", "v": 1}),
    ("dataclass naming an enum", {TAG: "dataclass", "c": f"{__name__}:Color", "v": {}}),
    ("enum naming a builtin", {TAG: "enum", "c": "builtins:eval", "v": "1"}),
    ("missing module", {TAG: "dataclass", "c": "no_such_module_xyz:Thing", "v": {}}),
    ("locals path", {TAG: "dataclass", "c": "os:f.<locals>.G", "v": {}}),
    ("path without colon", {TAG: "dataclass", "c": "os.system", "v": {}}),
    ("non-str class path", {TAG: "enum", "c": 3, "v": 1}),
    ("unknown tag", {TAG: "pickle", "v": "x"}),
    ("non-str tag", {TAG: 1, "v": "x"}),
    ("tuple without list", {TAG: "tuple", "v": "abc"}),
    ("tuple extra key", {TAG: "tuple", "v": [], "w": 1}),
    ("tuple missing v", {TAG: "tuple"}),
    ("bad base64", {TAG: "bytes", "v": "!!!"}),
    ("bad datetime", {TAG: "datetime", "v": "yesterday"}),
    ("bad timedelta", {TAG: "timedelta", "v": [1, 2]}),
    ("bad dict pairs", {TAG: "dict", "v": [[1]]}),
    ("unhashable dict key", {TAG: "dict", "v": [[[1], 2]]}),
    ("bad enum value", {TAG: "enum", "c": f"{__name__}:Color", "v": "purple"}),
    ("unknown dataclass field", {TAG: "dataclass", "c": f"{__name__}:Point", "v": {"z": 1}}),
    ("bad result ok", {TAG: "result", "ok": 1, "v": None, "e": None}),
]


@pytest.mark.parametrize(("label", "payload"), FORGED, ids=[f[0] for f in FORGED])
def test_malformed_or_forged_tag_is_refused(label: str, payload: Any) -> None:
    with pytest.raises(SerializationError):
        json_serializer.loads(json.dumps(payload).encode())


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[1,]", b"NaN", b"[Infinity]", b"\xff\xfe", b"1" * 5000],
    ids=["empty", "truncated", "trailing comma", "nan", "infinity", "not utf8", "huge int"],
)
def test_invalid_json_is_refused(data: bytes) -> None:
    with pytest.raises(SerializationError):
        json_serializer.loads(data)


# --------------------------------------------------------------------------- errors


def raise_and_catch(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_builtin_error_round_trips_type_and_args() -> None:
    decoded = decode_error(encode_error(ValueError("boom")))
    assert type(decoded) is ValueError
    assert decoded.args == ("boom",)


def test_module_level_custom_error_round_trips() -> None:
    decoded = decode_error(encode_error(CustomError(7, "bad")))
    assert type(decoded) is CustomError
    assert decoded.args == (7, "bad")
    assert decoded.code == 7


def test_local_error_class_becomes_remote_error_with_qualname() -> None:
    class LocalError(Exception):
        pass

    decoded = decode_error(encode_error(LocalError("nope")))
    assert isinstance(decoded, RemoteError)
    assert "LocalError" in decoded.type_name
    assert decoded.message == "nope"


def test_error_whose_constructor_fails_becomes_remote_error() -> None:
    decoded = decode_error(encode_error(KeywordOnlyError(code=5)))
    assert isinstance(decoded, RemoteError)
    assert decoded.type_name.endswith(":KeywordOnlyError")
    assert decoded.message == "code 5"


def test_error_with_unstorable_args_becomes_remote_error() -> None:
    decoded = decode_error(encode_error(ValueError(object())))
    assert isinstance(decoded, RemoteError)
    assert decoded.type_name == "builtins:ValueError"


def test_remote_error_round_trips() -> None:
    original = RemoteError("pkg.mod:Gone", "it failed", "Traceback ...\n")
    decoded = decode_error(encode_error(original))
    assert type(decoded) is RemoteError
    assert (decoded.type_name, decoded.message) == ("pkg.mod:Gone", "it failed")
    assert decoded.remote_traceback == "Traceback ...\n"


def test_encoded_remote_error_records_its_original_type() -> None:
    stored = json.loads(encode_error(RemoteError("pkg.mod:Gone", "x")))
    assert stored["remote_type"] == "pkg.mod:Gone"


def test_error_with_custom_reduce_round_trips() -> None:
    decoded = decode_error(encode_error(UnregisteredFunctionError("charge", ["a", "b"])))
    assert type(decoded) is UnregisteredFunctionError
    assert decoded.name == "charge"
    assert decoded.registered == ["a", "b"]


@pytest.mark.parametrize(
    "exc",
    [KeyboardInterrupt(), SystemExit(3), GeneratorExit(), KeyError(("a", 1)), OSError(2, "nope")],
    ids=repr,
)
def test_base_exceptions_round_trip_generically(exc: BaseException) -> None:
    decoded = decode_error(encode_error(exc))
    assert type(decoded) is type(exc)
    assert decoded.args == exc.args


def test_decoded_error_has_remote_traceback_of_original_raise() -> None:
    decoded = decode_error(encode_error(raise_and_catch(ValueError("boom"))))
    assert "raise_and_catch" in decoded.remote_traceback  # type: ignore[attr-defined]
    assert "ValueError: boom" in decoded.remote_traceback  # type: ignore[attr-defined]


def test_reencoding_a_decoded_error_keeps_the_first_traceback() -> None:
    first = decode_error(encode_error(raise_and_catch(ValueError("boom"))))
    again = decode_error(encode_error(raise_and_catch(first)))
    assert again.remote_traceback == first.remote_traceback  # type: ignore[attr-defined]


def test_error_attributes_and_notes_are_restored() -> None:
    exc = ValueError("x")
    exc.code = 5  # type: ignore[attr-defined]
    exc.add_note("while charging")
    decoded = decode_error(encode_error(exc))
    assert decoded.code == 5  # type: ignore[attr-defined]
    assert decoded.__notes__ == ["while charging"]


def test_exception_group_round_trips() -> None:
    group = ExceptionGroup("many", [ValueError("a"), KeyError("b")])
    decoded = decode_error(encode_error(group))
    assert type(decoded) is ExceptionGroup
    assert decoded.message == "many"
    assert [type(e) for e in decoded.exceptions] == [ValueError, KeyError]


def test_error_with_surrogates_in_message_still_encodes() -> None:
    exc = FileNotFoundError(2, "No such file", "caf\udce9")
    decoded = decode_error(encode_error(exc))
    assert isinstance(decoded, FileNotFoundError | RemoteError)
    assert "caf" in str(decoded)


def test_forged_error_class_is_not_called(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    payload = {TAG: "error", "type": "os:system", "message": "m", "traceback": "", "args": ["x"]}
    decoded = decode_error(json.dumps(payload).encode())
    assert isinstance(decoded, RemoteError)
    assert calls == []


def test_decode_error_refuses_non_error_payload() -> None:
    with pytest.raises(SerializationError, match="not an encoded error"):
        decode_error(json_serializer.dumps([1]))


# --------------------------------------------------------------------------- pickle


class Unjsonable:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unjsonable) and other.value == self.value

    __hash__ = None  # type: ignore[assignment]


def test_pickle_round_trip() -> None:
    serializer = PickleSerializer(b"secret")
    value = (Unjsonable({1, 2}), 1j, float("nan") != float("nan"))
    assert serializer.loads(serializer.dumps(value)) == value


def test_pickle_payload_layout_is_version_mac_pickle() -> None:
    data = PickleSerializer(b"k").dumps([1])
    assert data[0] == 1
    assert pickle.loads(data[33:]) == [1]


def test_pickle_tampered_payload_is_refused_before_unpickling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    serializer = PickleSerializer(b"secret")
    data = bytearray(serializer.dumps({"a": 1}))
    data[-2] ^= 0x01

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle.loads must not be called")

    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(SerializationError, match="signature mismatch: refusing to unpickle"):
        serializer.loads(bytes(data))


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01" + b"x" * 31, b"\x02" + b"x" * 40], ids=repr)
def test_pickle_short_or_unversioned_payload_is_refused(
    monkeypatch: pytest.MonkeyPatch, data: bytes
) -> None:
    monkeypatch.setattr(pickle, "loads", pytest.fail)
    with pytest.raises(SerializationError, match="signature mismatch: refusing to unpickle"):
        PickleSerializer(b"secret").loads(data)


def test_pickle_payload_signed_with_other_key_is_refused() -> None:
    data = PickleSerializer(b"one").dumps(1)
    with pytest.raises(SerializationError, match="signature mismatch"):
        PickleSerializer(b"two").loads(data)


def test_pickle_rotation_accepts_old_key_and_signs_with_first() -> None:
    old = PickleSerializer(b"old")
    rotated = PickleSerializer([b"new", b"old"])
    assert rotated.loads(old.dumps("x")) == "x"
    assert PickleSerializer(b"new").loads(rotated.dumps("y")) == "y"
    with pytest.raises(SerializationError):
        old.loads(rotated.dumps("y"))


def test_pickle_str_key_equals_its_utf8_bytes() -> None:
    assert PickleSerializer(b"k\xc3\xa9").loads(PickleSerializer("ké").dumps(1)) == 1


@pytest.mark.parametrize("keys", [[], b"", "", [b"ok", b""]], ids=repr)
def test_pickle_empty_keys_are_rejected(keys: Any) -> None:
    with pytest.raises(ValueError):
        PickleSerializer(keys)


def test_pickle_failure_names_path() -> None:
    with pytest.raises(SerializationError, match="cannot pickle args"):
        PickleSerializer(b"k").dumps((lambda: 1,), path="args")


def test_pickle_repr_hides_keys() -> None:
    assert "secret" not in repr(PickleSerializer(b"secret"))


# ------------------------------------------------------------------------- factory


def test_resolve_json() -> None:
    assert isinstance(resolve_serializer("json"), JsonSerializer)


def test_resolve_pickle_with_explicit_key() -> None:
    serializer = resolve_serializer("pickle", pickle_key="k")
    assert isinstance(serializer, PickleSerializer)
    assert PickleSerializer("k").loads(serializer.dumps(1)) == 1


def test_resolve_pickle_from_env_with_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STENT_PICKLE_KEY", "new, old")
    serializer = resolve_serializer("pickle")
    assert serializer.loads(PickleSerializer("old").dumps(2)) == 2
    assert PickleSerializer("new").loads(serializer.dumps(3)) == 3


def test_resolve_pickle_without_key_explains_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STENT_PICKLE_KEY", raising=False)
    with pytest.raises(ValueError, match=r"pickle_key=.*STENT_PICKLE_KEY"):
        resolve_serializer("pickle")


def test_resolve_unknown_name() -> None:
    with pytest.raises(ValueError) as info:
        resolve_serializer("xyz")
    assert str(info.value) == (
        "unknown serializer 'xyz': expected 'json', 'pickle' or an object with dumps()/loads()"
    )


class PlainSerializer:
    """A user serializer without a path= parameter."""

    def dumps(self, obj: Any) -> bytes:
        if obj == "boom":
            raise RuntimeError("cannot")
        return repr(obj).encode()

    def loads(self, data: bytes) -> Any:
        if data == b"bad":
            raise RuntimeError("corrupt")
        return data.decode()


def test_resolve_returns_custom_object_unchanged() -> None:
    custom = PlainSerializer()
    assert resolve_serializer(custom) is custom


@pytest.mark.parametrize(
    "spec", [42, None, PlainSerializer, object()], ids=["int", "none", "class", "object"]
)
def test_resolve_rejects_other_things_with_type_error(spec: Any) -> None:
    with pytest.raises(TypeError):
        resolve_serializer(spec)


def test_dumps_with_path_passes_path_to_own_serializers() -> None:
    with pytest.raises(SerializationError, match=r"at result\['x'\]"):
        dumps_with_path(JsonSerializer(), {"x": object()}, "result")


def test_dumps_with_path_calls_user_serializer_without_path() -> None:
    assert dumps_with_path(PlainSerializer(), (1,), "args") == b"(1,)"


def test_dumps_with_path_wraps_user_serializer_errors() -> None:
    with pytest.raises(SerializationError, match="cannot serialize args with PlainSerializer"):
        dumps_with_path(PlainSerializer(), "boom", "args")


def test_dumps_with_path_refuses_non_bytes_output() -> None:
    class StrSerializer:
        def dumps(self, obj: Any) -> Any:
            return "text"

        def loads(self, data: bytes) -> Any:
            return data

    with pytest.raises(SerializationError, match="returned str, expected bytes"):
        dumps_with_path(StrSerializer(), 1, "args")


def test_loads_with_path_wraps_user_serializer_errors() -> None:
    with pytest.raises(SerializationError, match="cannot deserialize result"):
        loads_with_path(PlainSerializer(), b"bad", "result")


# ---------------------------------------------------------------------- payload size


def test_payload_at_limit_is_accepted() -> None:
    check_payload_size(b"x" * 10, 10, "args")


def test_payload_over_limit_is_refused_with_sizes() -> None:
    with pytest.raises(PayloadTooLargeError) as info:
        check_payload_size(b"x" * 11, 10, "args of 'charge'")
    assert str(info.value) == "args of 'charge' is 11 bytes encoded, over max_payload_bytes=10"
    assert isinstance(info.value, SerializationError)
