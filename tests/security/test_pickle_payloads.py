"""A pickled ``__reduce__`` payload written straight into the database never runs.

The payload would create a sentinel file when unpickled (checked first, by unpickling it
here). It is stored as a task's arguments, an execution's and a step's result, and a
signal's payload:

* in JSON mode (it is not JSON: refused);
* in pickle mode without a MAC, with a wrong MAC (zeros, another key's, another body's, a
  truncated one) and with an unknown format version (stent/serialization.py: one version
  byte, a 32-byte HMAC-SHA256 of the body, the body; refused before ``pickle.loads``).

The sentinel never appears; a task that cannot decode its arguments is dead-lettered with a
reason that says so; a client reading a forged result gets ``SerializationError``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stent import RetryPolicy, SerializationError, Stent
from stent.backend import Backend
from stent.serialization import PickleSerializer, decode_error
from stent_testing import FakeClock

from .rawdb import RawDB
from .workflows import echo, healthy

KEY = b"stent-security-test-key"


class Exploit:
    """Unpickling this opens (creates) ``path`` for writing."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


BENIGN = PickleSerializer(KEY).dumps(("hello",))

#: how each variant wraps the raw pickle: (serializer of the executor, framing)
VARIANTS: dict[str, tuple[str, Callable[[bytes], bytes]]] = {
    "json": ("json", lambda body: body),
    "pickle-no-mac": ("pickle", lambda body: body),
    "pickle-version-only": ("pickle", lambda body: b"\x01" + body),
    "pickle-zero-mac": ("pickle", lambda body: b"\x01" + bytes(32) + body),
    "pickle-other-key": ("pickle", lambda body: b"\x01" + _mac(b"attacker", body) + body),
    "pickle-mac-of-other-body": ("pickle", lambda body: BENIGN[:33] + body),
    "pickle-truncated-mac": ("pickle", lambda body: b"\x01" + _mac(KEY, body)[:16] + body),
    "pickle-unknown-version": ("pickle", lambda body: b"\x02" + _mac(KEY, body) + body),
}


def exploit(sentinel: Path) -> bytes:
    """The raw pickle; checked to be live: unpickling it creates ``sentinel``."""
    body = pickle.dumps(Exploit(str(sentinel)), protocol=5)
    pickle.loads(body).close()
    assert sentinel.exists(), "the exploit does not work: the test would prove nothing"
    sentinel.unlink()
    return body


def framed_args(payload: bytes) -> bytes:
    """A stored call: 4-byte big-endian length of the args part, then it (no kwargs)."""
    return len(payload).to_bytes(4, "big") + payload


def make_executor(backend: Backend, serializer: str, clock: FakeClock) -> Stent:
    options: dict[str, Any] = {"clock": clock}
    if serializer == "pickle":
        options.update(serializer="pickle", pickle_key=KEY)
    return Stent(backend, **options)


@pytest.fixture
def sentinel(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("part", ["args", "kwargs"])
async def test_forged_arguments_never_run_and_are_dead_lettered(
    stent_backend: Backend, raw: RawDB, fake_clock: FakeClock, worker_of: Any, sentinel: Path,
    variant: str, part: str,
) -> None:
    serializer, frame = VARIANTS[variant]
    ex = make_executor(stent_backend, serializer, fake_clock)
    eid = await ex.dispatch(echo, 1)
    record = await stent_backend.get_execution(eid)
    assert record is not None
    root = record.root_task_id
    forged = frame(exploit(sentinel))
    if part == "args":
        stored = framed_args(forged)
    else:  # genuine args, forged kwargs
        genuine = (ex.serializer.dumps(("ok",)))
        stored = len(genuine).to_bytes(4, "big") + genuine + forged
    await raw.execute("UPDATE stent_tasks SET args = ? WHERE id = ?", stored, root)
    try:
        await worker_of(ex)
        result = await asyncio.wait_for(ex.wait_for(eid), 60)
        assert not result.ok
        assert not sentinel.exists(), "the forged pickle ran"
        letter = await ex.get_dead_letter(root)
        assert letter is not None, "the task was not dead-lettered"
        assert "undecodable arguments" in letter.reason, letter.reason
        if serializer == "pickle":
            assert "signature mismatch" in letter.reason, letter.reason
        assert letter.error is not None
        assert isinstance(decode_error(letter.error), SerializationError)
        task = await stent_backend.get_task(root)
        assert task is not None and task.state == "failed" and task.attempt == 1
        # the worker is fine
        ok = await ex.dispatch(healthy, 4)
        assert (await asyncio.wait_for(ex.wait_for(ok), 30)).unwrap() == 8
    finally:
        await ex.shutdown()
    assert not sentinel.exists()


@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_forged_results_are_refused_when_read(
    stent_backend: Backend, raw: RawDB, fake_clock: FakeClock, worker_of: Any, sentinel: Path,
    variant: str,
) -> None:
    serializer, frame = VARIANTS[variant]
    ex = make_executor(stent_backend, serializer, fake_clock)
    try:
        await worker_of(ex)
        eid = await ex.dispatch(healthy, 1)
        assert (await asyncio.wait_for(ex.wait_for(eid), 30)).unwrap() == 2
        forged = frame(exploit(sentinel))
        await raw.execute("UPDATE stent_executions SET result = ? WHERE id = ?", forged, eid)
        await raw.execute("UPDATE stent_tasks SET result = ? WHERE execution_id = ?", forged, eid)
        with pytest.raises(SerializationError):
            await ex.result_of(eid)
        # (this executor remembers the outcome it finished; a client reads the database)
        client = make_executor(stent_backend, serializer, fake_clock)
        with pytest.raises(SerializationError):
            await client.wait_for(eid)
        state = await ex.state_of(eid)  # an inspection shows it cannot decode it, and lives
        assert isinstance(state.result, str) and "undecodable" in state.result
        await ex.history(eid)  # exports the stored bytes without decoding them
        # a fresh executor in the other mode refuses it as well
        other = make_executor(stent_backend, "json" if serializer == "pickle" else "pickle",
                              fake_clock)
        with pytest.raises(SerializationError):
            await other.result_of(eid)
    finally:
        await ex.shutdown()
    assert not sentinel.exists(), "the forged pickle ran"


async def test_forged_result_in_the_cli_never_runs(
    stent_backend: Backend, raw: RawDB, fake_clock: FakeClock, worker_of: Any, sentinel: Path,
    stent_backend_kind: str,
) -> None:
    ex = make_executor(stent_backend, "json", fake_clock)
    try:
        await worker_of(ex)
        eid = await ex.dispatch(healthy, 1)
        await asyncio.wait_for(ex.wait_for(eid), 30)
    finally:
        await ex.shutdown()
    forged = exploit(sentinel)
    await raw.execute("UPDATE stent_executions SET result = ?, args = ? WHERE id = ?",
                      forged, framed_args(forged), eid)
    await raw.execute("UPDATE stent_tasks SET result = ?, args = ? WHERE execution_id = ?",
                      forged, framed_args(forged), eid)
    if stent_backend_kind == "sqlite":
        db = ["--db", f"sqlite:///{stent_backend.path}"]  # type: ignore[attr-defined]
    else:
        db = ["--db", stent_backend.dsn, "--schema", stent_backend.schema]  # type: ignore[attr-defined]
    env = {k: v for k, v in os.environ.items() if k not in ("STENT_DATABASE_URL",
                                                            "DATABASE_URL")}
    env["STENT_PICKLE_KEY"] = KEY.decode()
    for command in (["show", eid], ["show", eid, "--json"], ["tasks", "list", eid],
                    ["tasks", "show", eid], ["history", "export", eid], ["list"]):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "stent.cli", *command, *db, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert "Traceback" not in err.decode(), err.decode()
        assert proc.returncode in (0, 1), (command, err.decode())
        assert not sentinel.exists(), f"stent {' '.join(command)} ran the forged pickle"


ONCE = RetryPolicy(max_attempts=1)


# One attempt: a retry would run the step afresh (SPEC §4) and hide the refusal.
@Stent.durable(name="security:calls_then_sleeps", retry_policy=ONCE)
async def calls_then_sleeps() -> Any:
    value = await healthy(5)
    await Stent.sleep(3600)
    return value


@Stent.durable(name="security:waits_for_go", retry_policy=ONCE)
async def waits_for_go() -> Any:
    await Stent.sleep(3600)
    return await Stent.wait_for_signal("go")


async def _until(predicate: Callable[[], Any], what: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("variant", ["json", "pickle-no-mac", "pickle-other-key"])
@pytest.mark.parametrize("where", ["step-result", "signal-payload"])
async def test_forged_payloads_met_on_replay_never_run(
    stent_backend: Backend, raw: RawDB, fake_clock: FakeClock, worker_of: Any, sentinel: Path,
    variant: str, where: str,
) -> None:
    """A suspended workflow whose recorded step result (or queued signal payload) was
    replaced meets it when it resumes by replay: refused, the workflow fails, nothing ran."""
    serializer, frame = VARIANTS[variant]
    fake_clock.auto_advance = False
    ex = make_executor(stent_backend, serializer, fake_clock)
    try:
        await worker_of(ex, suspend_after=1.0)
        fn = calls_then_sleeps if where == "step-result" else waits_for_go
        eid = await ex.dispatch(fn)

        async def suspended() -> bool:
            await fake_clock.advance(2)
            tasks = await stent_backend.list_tasks_for_execution(eid)
            root = next(t for t in tasks if t.parent_id is None)
            return root.state == "waiting" and root.worker_id is None

        await _until(suspended, "the workflow to be suspended")
        forged = frame(exploit(sentinel))
        if where == "step-result":
            tasks = await stent_backend.list_tasks_for_execution(eid)
            step = next(t for t in tasks if t.step_name == healthy.name)
            assert step.state == "completed"
            await raw.execute("UPDATE stent_tasks SET result = ? WHERE id = ?", forged, step.id)
        else:
            await ex.send_signal(eid, "go", "genuine")
            await raw.execute("UPDATE stent_signals SET payload = ? WHERE execution_id = ?",
                              forged, eid)
        fake_clock.auto_advance = True
        result = await asyncio.wait_for(ex.wait_for(eid), 60)
        assert not result.ok, result
        assert not sentinel.exists(), "the forged pickle ran"
        assert isinstance(result.error, SerializationError), repr(result.error)
        letters = [d for d in await ex.list_dead_letters() if d.execution_id == eid]
        assert [d.reason for d in letters] == ["attempts exhausted (1 of 1)"]
    finally:
        await ex.shutdown()
    assert not sentinel.exists()
