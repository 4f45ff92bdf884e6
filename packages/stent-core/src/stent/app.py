"""``Stent``: the executor. A thin facade over dispatch, waiting, inspection and workers."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar, overload

from . import steps
from .backend import Backend, NotificationBackend
from .caching import cache_key, uses_cache
from .clock import Clock, SystemClock, hint_due
from .context import ExecutionContext, require_task_context
from .durable import DurableFunction, default_registry
from .durable import durable as _durable
from .durations import parse_duration, parse_optional_duration
from .errors import (
    ExecutionCancelledError,
    ExecutionNotFinished,
    ExecutionNotFound,
    ExpiryError,
    IdempotencyConflictError,
    UnregisteredFunctionError,
)
from .health import HealthServer, metrics_text_of
from .inspection import ExecutionState, execution_state, export_history
from .lifecycle import WorkerLifecycle
from .names import check_key, check_name, check_priority, check_queue, check_tags, is_lookup_id
from .records import (
    TERMINAL_EXECUTION_STATES,
    DeadLetterRecord,
    ExecutionRecord,
    NewExecution,
    NewTask,
    TaskKind,
    TaskOutcome,
)
from .registry import FunctionRegistry
from .result import Result
from .serialization import (
    Serializer,
    check_payload_size,
    decode_error,
    dumps_with_path,
    encode_error,
    resolve_serializer,
)
from .tracing import Tracing
from .waiting import CompletionHub
from .worker import Worker

log = logging.getLogger("stent")
T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


class _LazyNamespace:
    """Attributes imported on first use, with an install hint when the package is missing."""

    def __init__(self, entries: dict[str, tuple[str, str, str]]) -> None:
        self._entries = entries

    def __getattr__(self, name: str) -> Any:
        try:
            module, attr, dist = self._entries[name]
        except KeyError:
            raise AttributeError(name) from None
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ImportError(
                f"{name} needs the {dist} package: pip install {dist} ({exc})"
            ) from exc

    def __dir__(self) -> list[str]:
        return sorted(self._entries)


class Stent:
    """The executor: dispatches durable functions, waits for them, inspects them, and serves
    them on workers.

    Args:
        backend: where everything is stored (``Stent.backends.SQLiteBackend(path)`` etc.).
        serializer: ``"json"`` (exact round trips or a ``SerializationError``), ``"pickle"``
            (HMAC-signed; needs ``pickle_key`` or ``STENT_PICKLE_KEY``) or an object with
            ``dumps(obj) -> bytes`` and ``loads(bytes) -> obj``.
        notification_backend: cross-process wake-ups (optional; polling is the safety net).
        poll_min_interval, poll_max_interval, poll_backoff_factor: the completion poll.
        function_registry: where functions are looked up (default ``Stent.default_registry``).
        metrics: a ``MetricsRecorder``.
        clock: the clock for every timing decision (default: the system clock).
        tracer_provider: OpenTelemetry tracer provider for ``stent.dispatch`` and
            ``stent.step`` spans (default: the global one if ``opentelemetry-api`` is
            installed; without it, no tracing).
        pickle_key: signing key(s) for the pickle serializer.
        max_payload_bytes: bound on every encoded argument set, result and signal payload.
        max_crash_recoveries: take-overs after worker deaths before a task is dead-lettered.
        durable_asyncio_sleep: promote ``asyncio.sleep(>= 1 s)`` in durable functions.
    """

    default_registry: ClassVar[FunctionRegistry] = default_registry
    if TYPE_CHECKING:

        @overload
        @staticmethod
        def durable(fn: Callable[P, Coroutine[Any, Any, R]], /) -> DurableFunction[P, R]: ...

        @overload
        @staticmethod
        def durable(
            fn: None = None, /, **options: Any
        ) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], DurableFunction[P, R]]: ...

        @staticmethod
        def durable(fn: Any = None, /, **options: Any) -> Any: ...

    else:
        durable = staticmethod(_durable)
    backends: ClassVar[_LazyNamespace] = _LazyNamespace({
        "SQLiteBackend": ("stent_postgres", "SQLiteBackend", "stent-postgres"),
        "PostgresBackend": ("stent_postgres", "PostgresBackend", "stent-postgres"),
        "InMemoryBackend": ("stent_testing.memory", "InMemoryBackend", "stent-testing"),
    })
    notifications: ClassVar[_LazyNamespace] = _LazyNamespace({
        "RedisBackend": ("stent_redis", "RedisBackend", "stent-redis"),
    })
    _default: ClassVar[Stent | None] = None

    def __init__(
        self,
        backend: Backend,
        serializer: str | Serializer = "json",
        notification_backend: NotificationBackend | None = None,
        poll_min_interval: float = 0.1,
        poll_max_interval: float = 5.0,
        poll_backoff_factor: float = 2.0,
        function_registry: FunctionRegistry | None = None,
        metrics: Any = None,
        clock: Clock | None = None,
        tracer_provider: Any = None,
        pickle_key: bytes | str | Sequence[bytes | str] | None = None,
        max_payload_bytes: int = 2 * 1024 * 1024,
        max_crash_recoveries: int = 10,
        durable_asyncio_sleep: bool = False,
    ) -> None:
        if backend is None or not hasattr(backend, "claim"):
            raise TypeError(f"backend must be a Stent backend, not {backend!r}")
        for name, v in (("poll_min_interval", poll_min_interval),
                        ("poll_max_interval", poll_max_interval)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ValueError(f"invalid {name} {v!r}: expected seconds > 0")
        if poll_max_interval < poll_min_interval:
            raise ValueError("poll_max_interval must be >= poll_min_interval")
        if not isinstance(poll_backoff_factor, int | float) or poll_backoff_factor < 1:
            raise ValueError(f"invalid poll_backoff_factor {poll_backoff_factor!r}: expected >= 1")
        if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int) or max_payload_bytes < 1:
            raise ValueError(f"invalid max_payload_bytes {max_payload_bytes!r}: expected an int >= 1")
        if isinstance(max_crash_recoveries, bool) or not isinstance(max_crash_recoveries, int) or max_crash_recoveries < 0:
            raise ValueError(f"invalid max_crash_recoveries {max_crash_recoveries!r}: expected an int >= 0")
        self.backend = backend
        self.serializer: Serializer = resolve_serializer(serializer, pickle_key=pickle_key)
        if notification_backend is None:
            # A backend may bring its own wake-ups (PostgreSQL: LISTEN/NOTIFY), so that no
            # extra service is needed for idle workers to start new work at once.
            factory = getattr(backend, "default_notification_backend", None)
            if callable(factory):
                notification_backend = factory()
        self.notifications_backend = notification_backend
        self.poll_min_interval = float(poll_min_interval)
        self.poll_max_interval = float(poll_max_interval)
        self.poll_backoff_factor = float(poll_backoff_factor)
        self.registry = function_registry if function_registry is not None else default_registry
        self.metrics = metrics
        self.clock: Clock = clock if clock is not None else SystemClock()
        watch_busy = getattr(self.clock, "watch_busy", None)
        if callable(watch_busy) and hasattr(backend, "in_flight"):
            # a test clock must not think the program idle while a database call is out
            watch_busy(lambda: backend.in_flight > 0)
        self.tracer_provider = tracer_provider
        self.tracing = Tracing(tracer_provider)
        self.max_payload_bytes = max_payload_bytes
        self.max_crash_recoveries = max_crash_recoveries
        self.durable_asyncio_sleep = bool(durable_asyncio_sleep)
        if self.durable_asyncio_sleep:
            from . import asyncio_sleep

            asyncio_sleep.install()
        self.hub = CompletionHub(self)
        self.worker_name_prefix = f"{socket.gethostname()}-{os.getpid()}"
        self._workers: list[Worker] = []
        self._lifecycles: list[WorkerLifecycle] = []
        self._ready: asyncio.Event | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._notifications_started = False
        #: health endpoints of running workers (their ``port`` is known once started)
        self.health_servers: list[HealthServer] = []

    # -- the default executor ------------------------------------------------------------------
    @classmethod
    def use(cls, backend: Backend, **kwargs: Any) -> Stent:
        """Make a new executor on ``backend`` the default (mode 2 calls go through it)."""
        executor = cls(backend, **kwargs)
        cls._default = executor
        return executor

    @classmethod
    def reset(cls) -> None:
        """Clear the default executor."""
        cls._default = None

    @classmethod
    def current(cls) -> Stent | None:
        """The default executor, or None."""
        return cls._default

    @classmethod
    @contextlib.asynccontextmanager
    async def bootstrap(
        cls, backend: Backend, *, serve: bool = False, **serve_kw: Any
    ) -> AsyncIterator[Stent]:
        """``init_db``, ``use``, optionally ``serve`` (waiting until the worker is ready), and
        tear it all down on exit: stop the worker, clear the default executor, close the
        backend. Executor options may be passed in ``serve_kw`` under the key ``executor``
        (a dict)."""
        executor_kw = serve_kw.pop("executor", {})
        await backend.init_db()
        executor = cls.use(backend, **executor_kw)
        task: asyncio.Task[None] | None = None
        try:
            if serve:
                task = asyncio.get_running_loop().create_task(executor.serve(**serve_kw))
                ready = asyncio.ensure_future(executor.wait_until_ready())
                await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
                if task.done():
                    ready.cancel()
                    task.result()  # raises what made the worker stop
            yield executor
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await executor.shutdown()
            if cls._default is executor:
                cls.reset()
            await backend.close()

    # -- dispatch -------------------------------------------------------------------------------
    def _resolve_fn(self, fn: Any) -> DurableFunction[..., Any]:
        if isinstance(fn, DurableFunction):
            if fn.name not in self.registry:
                raise UnregisteredFunctionError(fn.name, self.registry.names())
            return fn
        if isinstance(fn, str):
            return self.registry.get(fn)
        name = getattr(fn, "__qualname__", repr(fn))
        raise UnregisteredFunctionError(
            f"{getattr(fn, '__module__', '?')}:{name}", self.registry.names()
        )

    async def dispatch(
        self,
        fn: DurableFunction[..., Any] | str,
        *args: Any,
        max_duration: object = None,
        expiry: object = None,
        delay: object = None,
        tags: Sequence[str] | None = None,
        priority: int | None = None,
        queue: str | None = None,
        execution_id: str | None = None,
        idempotency_key: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Start a new execution of ``fn(*args, **kwargs)``.

        Arguments are validated and encoded first: a bad one raises before anything is
        written.

        Returns:
            The execution id (the existing one when ``execution_id`` or ``idempotency_key``
            was used before).
        """
        new = self._new_execution(fn, args, kwargs, max_duration=max_duration, expiry=expiry,
                                  delay=delay, tags=tags, priority=priority, queue=queue,
                                  execution_id=execution_id, idempotency_key=idempotency_key)
        with self.tracing.dispatch_span(new) as new:
            eid, created = await self.backend.create_execution(new, self.clock.now())
            if created:
                self._announce_work(new.root.due_at)
                self._announce_deadline(new.deadline)
            else:
                self.tracing.existing_execution(eid)
                await self._check_same_call(eid, new, execution_id, idempotency_key)
        return eid

    async def _check_same_call(self, eid: str, new: NewExecution, execution_id: str | None,
                               idempotency_key: str | None) -> None:
        """A reused ``execution_id``/``idempotency_key`` must name the same call."""
        ex = await self.backend.get_execution(eid)
        if ex is None:
            return  # cleaned up meanwhile: nothing to compare against
        if ex.function != new.function or ex.args != new.args:
            what = (f"idempotency_key {idempotency_key!r}" if idempotency_key is not None
                    else f"execution_id {execution_id!r}")
            raise IdempotencyConflictError(
                f"{what} already names execution {eid} of {ex.function} with other "
                f"arguments; this dispatch of {new.function} was not started"
            )

    def _new_execution(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, max_duration: object,
        expiry: object, delay: object, tags: Sequence[str] | None, priority: int | None,
        queue: str | None, execution_id: str | None, idempotency_key: str | None,
    ) -> NewExecution:
        func = self._resolve_fn(fn)
        if max_duration is not None and expiry is not None:
            raise ValueError("pass max_duration or expiry (its deprecated synonym), not both")
        limit = parse_optional_duration(max_duration if max_duration is not None else expiry)
        wait = parse_optional_duration(delay) or timedelta(0)
        route_tags = check_tags(tags) if tags is not None else func.tags
        route_queue = check_queue(queue) if queue is not None else func.queue
        route_priority = check_priority(priority) if priority is not None else func.priority
        if execution_id is not None:
            check_key("execution_id", execution_id, 200)
        if idempotency_key is not None:
            check_key("idempotency_key", idempotency_key, 1000)
        payload = steps.encode_call(self, func.name, args, kwargs)
        if uses_cache(func):
            cache_key(func, self.serializer, args, kwargs)  # a bad key fails at dispatch
        now = self.clock.now()
        eid = execution_id or uuid.uuid4().hex
        due = now + wait
        root = NewTask(
            id=eid, parent_id=None, parent_attempt=0, seq=0, step_name=func.name,
            kind=TaskKind.FUNCTION, args=payload, arg_digest=steps.call_digest(func.name, payload),
            due_at=due, queue=route_queue, tags=route_tags, priority=route_priority,
            retry_policy=func.retry_policy.to_dict(),
            timeout_s=func.timeout.total_seconds() if func.timeout else None,
            max_concurrent=func.max_concurrent, idempotency_key=eid,
        )
        return NewExecution(
            id=eid, function=func.name, args=payload, root=root, queue=route_queue,
            tags=route_tags, priority=route_priority, idempotency_key=idempotency_key,
            deadline=(due + limit) if limit is not None else None,
        )

    async def schedule(self, delay: object, fn: DurableFunction[..., Any] | str, *args: Any,
                       **kwargs: Any) -> str:
        """``dispatch(fn, *args, delay=delay, **kwargs)``."""
        return await self.dispatch(fn, *args, delay=delay, **kwargs)

    async def call_and_wait(
        self, fn: DurableFunction[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Mode 2: dispatch ``fn`` and return its value (a returned ``Result`` unchanged) or
        raise its error."""
        new = self._new_execution(fn, args, kwargs, max_duration=None, expiry=None, delay=None,
                                  tags=None, priority=None, queue=None, execution_id=None,
                                  idempotency_key=None)
        if not self._notifications_started:
            await self._start_notifications()
        with self.tracing.dispatch_span(new) as new:
            fut = self.hub.watch(new.id)  # before the row exists: no completion can slip past
            try:
                await self.backend.create_execution(new, self.clock.now())
                self._announce_work(new.root.due_at)
                outcome = await fut
            finally:
                self.hub.unwatch(new.id, fut)
            return await self._outcome_value(new.id, outcome)

    async def _outcome_value(self, execution_id: str, outcome: TaskOutcome) -> Any:
        if outcome.state == "completed":
            assert outcome.result is not None
            return self.serializer.loads(outcome.result)
        ex = await self.backend.get_execution(execution_id)
        if ex is not None and ex.error is not None:
            raise decode_error(ex.error)
        raise decode_error(outcome.error) if outcome.error else RuntimeError(
            f"execution {execution_id} ended {outcome.state}")

    def _announce_deadline(self, deadline: datetime | None) -> None:
        if deadline is not None:
            hint_due(self.clock, deadline + timedelta(microseconds=1))

    def _announce_work(self, due_at: datetime) -> None:
        hint_due(self.clock, due_at)
        for w in self._workers:
            if due_at <= self.clock.now():
                w.wake()
            else:
                w.timer_scheduled(due_at)
        self.publish("work", "")

    # -- waiting and results ----------------------------------------------------------------------
    def _result(self, state: str, result: bytes | None, error: bytes | None) -> Result[Any]:
        if state == "completed":
            assert result is not None
            value = self.serializer.loads(result)
            return value if isinstance(value, Result) else Result.Ok(value)
        if error is None:
            return Result.Error(RuntimeError(f"execution ended {state} without a stored error"))
        return Result.Error(decode_error(error))

    async def _get_execution(self, execution_id: str) -> ExecutionRecord:
        if not is_lookup_id(execution_id):
            raise ExecutionNotFound(f"invalid execution id {execution_id!r}")
        ex = await self.backend.get_execution(execution_id)
        if ex is None:
            raise ExecutionNotFound(f"no execution with id {execution_id!r}")
        return ex

    async def wait_for(self, execution_id: str, expiry: object = None) -> Result[Any]:
        """Wait for an execution to finish.

        Args:
            execution_id: the id ``dispatch`` returned.
            expiry: give up after this long (seconds or a duration) with ``ExpiryError``.

        Returns:
            The function's own ``Result`` if it returned one, else ``Result.Ok(value)``;
            ``Result.Error(exception)`` for failed, timed-out and cancelled executions.
        """
        limit = parse_optional_duration(expiry)
        if not self._notifications_started:
            await self._start_notifications()
        recent = self.hub.recent(execution_id)  # the root task's id is the execution's id
        if recent is not None and recent.state == "completed":
            return self._result(recent.state, recent.result, None)
        fut = self.hub.watch(execution_id)
        try:
            ex = await self._get_execution(execution_id)
            if ex.state in TERMINAL_EXECUTION_STATES:
                return self._result(ex.state, ex.result, ex.error)
            if limit is None:
                outcome = await fut
            else:
                timer: asyncio.Future[Any] = asyncio.ensure_future(
                    self.clock.sleep(limit.total_seconds()))
                pending: list[asyncio.Future[Any]] = [fut, timer]
                try:
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    timer.cancel()
                if not fut.done():
                    raise ExpiryError(
                        f"execution {execution_id} did not finish within {limit}"
                    )
                outcome = fut.result()
        finally:
            self.hub.unwatch(execution_id, fut)
        if outcome.state == "completed":
            return self._result(outcome.state, outcome.result, None)
        ex = await self._get_execution(execution_id)
        return self._result(ex.state, ex.result, ex.error or outcome.error)

    async def result_of(self, execution_id: str) -> Result[Any]:
        """The ``Result`` of a finished execution (``ExecutionNotFinished`` otherwise)."""
        ex = await self._get_execution(execution_id)
        if ex.state not in TERMINAL_EXECUTION_STATES:
            raise ExecutionNotFinished(f"execution {execution_id} is {ex.state}")
        return self._result(ex.state, ex.result, ex.error)

    async def state_of(self, execution_id: str) -> ExecutionState:
        """A snapshot of the execution."""
        ex = await self._get_execution(execution_id)
        root = await self.backend.get_task(ex.root_task_id)
        return execution_state(self, ex, root)

    async def list_executions(
        self, limit: int = 10, offset: int = 0, state: str | None = None
    ) -> list[ExecutionState]:
        """Executions, newest first."""
        for name, v in (("limit", limit), ("offset", offset)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"invalid {name} {v!r}: expected an int >= 0")
        if state is not None and state not in {"pending", "running", "completed", "failed",
                                               "timed_out", "cancelling", "cancelled"}:
            raise ValueError(f"invalid execution state {state!r}")
        rows = await self.backend.list_executions(limit=limit, offset=offset, state=state)
        return [execution_state(self, ex, None) for ex in rows]

    async def cancel(self, execution_id: str) -> str:
        """Cancel an execution (SPEC §8): a pending or running one becomes ``cancelling``;
        its pending steps are cancelled, every running step receives
        ``asyncio.CancelledError`` (here at once, on other workers at their next heartbeat or
        notification), and it ends ``cancelled`` with an ``ExecutionCancelledError``.
        Cancelling a finished execution is a no-op.

        Returns:
            The execution's state after the call.
        """
        if not is_lookup_id(execution_id):
            raise ExecutionNotFound(f"invalid execution id {execution_id!r}")
        error = encode_error(ExecutionCancelledError(f"execution {execution_id} was cancelled"))
        state = await self.backend.cancel_execution(execution_id, error, self.clock.now())
        if state is None:
            raise ExecutionNotFound(f"no execution with id {execution_id!r}")
        self.stop_local_tasks([execution_id], "cancel")
        self.publish("cancel", execution_id)
        self.publish("done", execution_id)
        if state == "cancelled":
            self.hub.resolve(TaskOutcome(execution_id, "cancelled", None, error))
        return state

    async def send_signal(self, execution_id: str, name: str, payload: Any = None) -> None:
        """Send signal ``name`` with ``payload`` to an execution (SPEC §9).

        Signals queue per (execution, name) in the order sent; each
        ``Stent.wait_for_signal(name)`` consumes the next one. One sent before anybody waits
        is kept for the next wait; none is lost or delivered twice.

        Raises:
            ExecutionNotFound: no such execution (nothing is written).
            ValueError: ``name`` outside ``[A-Za-z0-9_.:-]{1,200}``.
            SerializationError, PayloadTooLargeError: a payload that cannot be stored.
        """
        if not is_lookup_id(execution_id):
            raise ExecutionNotFound(f"invalid execution id {execution_id!r}")
        name = check_name("signal", name)
        data = dumps_with_path(self.serializer, payload, f"payload of signal {name!r}")
        check_payload_size(data, self.max_payload_bytes, f"the payload of signal {name!r}")
        delivered = await self.backend.send_signal(execution_id, name, data, self.clock.now())
        if delivered is None:
            raise ExecutionNotFound(f"no execution with id {execution_id!r}")
        if delivered:
            self.hub.resolve(TaskOutcome(delivered, "completed", data, None))
            self.publish("done", delivered)
            # its caller may have been suspended: storage made it claimable again
            self._announce_work(self.clock.now())

    def stop_local_tasks(self, execution_ids: Sequence[str], reason: str) -> None:
        """Stop this process's running tasks of these executions."""
        wanted = set(execution_ids)
        for w in self._workers:
            for rt in list(w.running.values()):
                if rt.record.execution_id in wanted:
                    rt.stop(reason)

    async def queue_depth(self, queue: str | None = None) -> int:
        """Pending tasks in ``queue`` (None: the default queue)."""
        return await self.backend.queue_depth(check_queue(queue))

    async def history(self, execution_id: str) -> dict[str, Any]:
        """The recorded step history of an execution, as a JSON-able dict."""
        ex = await self._get_execution(execution_id)
        return export_history(ex, await self.backend.list_tasks_for_execution(execution_id))

    # -- dead letters -----------------------------------------------------------------------------
    async def list_dead_letters(self, limit: int = 50) -> list[DeadLetterRecord]:
        """Dead letters, newest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"invalid limit {limit!r}: expected an int >= 0")
        return await self.backend.list_dead_letters(limit)

    async def get_dead_letter(self, task_id: str) -> DeadLetterRecord | None:
        """One dead letter by task id, or None."""
        if not is_lookup_id(_check_task_type(task_id)):
            return None  # no stored task can have this id
        return await self.backend.get_dead_letter(task_id)

    async def replay_dead_letter(
        self, task_id: str, *, queue: str | None = None, reset_retries: bool = True
    ) -> bool:
        """Run a dead-lettered task again (on ``queue`` if given). Its failed callers resume
        by replay and its execution goes back to running.

        Returns:
            False if there is no such dead letter.
        """
        if not is_lookup_id(_check_task_type(task_id)):
            return False
        if not isinstance(reset_retries, bool):
            raise ValueError(f"invalid reset_retries {reset_retries!r}: expected a bool")
        q = check_queue(queue)
        ok = await self.backend.replay_dead_letter(
            task_id, queue=q, reset_retries=reset_retries, now=self.clock.now(),
            set_queue=queue is not None,
        )
        if ok:
            self._announce_work(self.clock.now())
        return ok

    async def discard_dead_letter(self, task_id: str) -> bool:
        """Delete a dead letter. Returns False if there was none."""
        if not is_lookup_id(_check_task_type(task_id)):
            return False
        return await self.backend.discard_dead_letter(task_id)

    # -- workers ------------------------------------------------------------------------------------
    async def serve(self, **kwargs: Any) -> None:
        """Run a worker until cancelled or drained. See SPEC §7 for the options."""
        health_port = kwargs.pop("health_port", None)
        health_host = kwargs.pop("health_host", "0.0.0.0")
        worker = Worker(self, **kwargs)
        health: HealthServer | None = None
        if health_port is not None:
            lifecycle = worker.lifecycle
            health = HealthServer(lambda: lifecycle.ready, metrics_text_of(self.metrics),
                                  host=health_host, port=health_port)
            await health.start()
            self.health_servers.append(health)
        try:
            await self._start_notifications()
            await worker.run()
        finally:
            if health is not None:
                await health.close()
                self.health_servers.remove(health)

    def register_worker(self, worker: Worker) -> None:
        """Called by a worker when it starts."""
        self._workers.append(worker)
        if worker.lifecycle not in self._lifecycles:
            self._lifecycles.append(worker.lifecycle)

    def unregister_worker(self, worker: Worker) -> None:
        """Called by a worker when it stops."""
        if worker in self._workers:
            self._workers.remove(worker)

    def worker_ready(self) -> None:
        """Called by a worker once it claims work."""
        self._ready_event().set()

    def _ready_event(self) -> asyncio.Event:
        if self._ready is None:
            self._ready = asyncio.Event()
        return self._ready

    async def wait_until_ready(self) -> None:
        """Return once a worker of this executor is ready to claim work (now, not before)."""
        event = self._ready_event()
        while not any(lc.ready for lc in self._lifecycles):
            event.clear()
            await event.wait()

    def create_worker_lifecycle(self, *, name: str | None = None) -> WorkerLifecycle:
        """A handle to pass to ``serve(lifecycle=...)`` for readiness and drain."""
        lc = WorkerLifecycle(name=name) if name else WorkerLifecycle()
        self._lifecycles.append(lc)
        return lc

    def request_worker_drain(self, lifecycle: WorkerLifecycle | None = None) -> None:
        """Drain one worker (or all): stop claiming, finish or suspend tasks, stop."""
        targets = [lifecycle] if lifecycle is not None else list(self._lifecycles)
        for lc in targets:
            lc.request_drain()
        for w in self._workers:
            if lifecycle is None or w.lifecycle is lifecycle:
                w.wake()

    def worker_status_overview(self) -> dict[str, Any]:
        """``{"ready": bool, "draining": bool, "workers": [...]}`` for this process."""
        workers = [lc.status() for lc in self._lifecycles]
        return {
            "ready": any(lc.ready for lc in self._lifecycles),
            "draining": any(lc.draining and lc.state != "stopped" for lc in self._lifecycles),
            "workers": workers,
        }

    async def shutdown(self) -> None:
        """Drain this executor's workers and stop its background tasks."""
        for w in list(self._workers):
            w.lifecycle.request_drain()
            w.wake()
        for _ in range(600):
            if not self._workers:
                break
            await asyncio.sleep(0.01)
        await self.hub.close()
        for t in list(self._background):
            t.cancel()
        if self.notifications_backend is not None:
            # also when it only published (a dispatch-only executor): close() is idempotent
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.notifications_backend.close(), 10)
            self._notifications_started = False

    # -- notifications and metrics -----------------------------------------------------------------
    async def _start_notifications(self) -> None:
        nb = self.notifications_backend
        if nb is None or self._notifications_started:
            return
        self._notifications_started = True

        async def on_message(channel: str, ids: Sequence[str]) -> None:
            if channel == "work":
                for w in self._workers:
                    w.wake()
            elif channel == "done":
                self.hub.notify_done(ids)
                for w in self._workers:
                    w.wake()
            elif channel == "cancel":
                self.stop_local_tasks(ids, "cancel")

        try:
            await nb.start(on_message)
        except Exception as exc:  # polling keeps everything correct without notifications
            log.warning("notification backend failed to start, polling only: %s", exc)

    def publish(self, channel: str, task_id: str) -> None:
        """Tell other processes (fire and forget; losing it costs latency only)."""
        nb = self.notifications_backend
        if nb is None:
            return

        async def send() -> None:
            try:
                await nb.publish(channel, [task_id] if task_id else [])
            except Exception as exc:
                log.debug("notification publish failed: %s", exc)

        t = asyncio.get_running_loop().create_task(send())
        self._background.add(t)
        t.add_done_callback(self._background.discard)

    def metric(self, name: str, **kwargs: Any) -> None:
        """Call the metrics recorder; a recorder that raises never harms a worker."""
        m = self.metrics
        if m is None:
            return
        try:
            getattr(m, name)(**kwargs)
        except Exception as exc:
            log.debug("metrics recorder %s.%s raised: %s", type(m).__name__, name, exc)

    # -- inside a task ---------------------------------------------------------------------------------
    @staticmethod
    async def sleep(duration: object) -> None:
        """A durable sleep inside a task (survives restarts); a plain sleep outside one."""
        delay = parse_duration(duration)
        from .context import current_task_context

        ctx = current_task_context()
        if ctx is None:
            await asyncio.sleep(delay.total_seconds())
            return
        await steps.durable_sleep(ctx, delay)

    @staticmethod
    async def wait_for_signal(name: str, timeout: object = None) -> Any:
        """Wait for the next signal ``name`` sent to this execution and return its payload.

        A signal sent before the wait is consumed at once. The wait is a durable step: it
        survives restarts, and a long one suspends the task (no coroutine, lease or slot).

        Raises:
            SignalTimeoutError: ``timeout`` (a duration) passed first.
            NotInExecutionContext: called outside a running task.
            ValueError: a bad name or timeout.
        """
        name = check_name("signal", name)
        limit = parse_optional_duration(timeout)
        ctx = require_task_context("Stent.wait_for_signal()")
        return await steps.wait_signal(ctx, name, limit)

    @staticmethod
    def context() -> ExecutionContext:
        """What the running task may know about itself, and its execution's counters and
        custom state (``await Stent.context().increment("emails")``)."""
        ctx = require_task_context("Stent.context()")
        t = ctx.task
        return ExecutionContext(execution_id=t.execution_id, task_id=t.id, attempt=t.attempt,
                                idempotency_key=t.idempotency_key, step_name=t.step_name,
                                fence=t.fence, _task=ctx)

    @staticmethod
    async def now() -> datetime:
        """The current time, recorded so that replay sees the same value."""
        ctx = require_task_context("Stent.now()")
        return await steps.record_value(ctx, steps.NOW_STEP, ctx.executor.clock.now)  # type: ignore[no-any-return]

    @staticmethod
    async def uuid4() -> uuid.UUID:
        """A random UUID, recorded so that replay sees the same value."""
        ctx = require_task_context("Stent.uuid4()")
        return await steps.record_value(ctx, steps.UUID_STEP, uuid.uuid4)  # type: ignore[no-any-return]




def _check_task_type(task_id: object) -> str:
    """A task id must be a non-empty str (``ValueError``); whether any stored task could
    have it is :func:`is_lookup_id`'s question."""
    if not isinstance(task_id, str) or not task_id:
        raise ValueError(f"invalid task id {task_id!r}: expected a non-empty str")
    return task_id
