"""OpenTelemetry tracing: one ``stent.dispatch`` span per dispatch and one ``stent.step`` span
per task run, joined into one trace per execution across processes.

The join goes through storage: every task carries the W3C ``traceparent`` of the span that
created it (:attr:`~stent.records.NewTask.trace_context`): the dispatch span for a root task,
the caller's step span for a step. Whichever worker runs the task starts its span as a child
of that ``traceparent``, so a workflow's spans form one trace however many processes ran it.

Tracing is optional (``pip install stent-core[tracing]``). A process that makes no spans
(no ``opentelemetry-api``, or no ``tracer_provider`` and no global provider configured) pays
one context variable per task: it hands each running task's stored ``traceparent`` on to the
tasks it creates, so that a trace crosses it unbroken.

Spans carry ids, names and attempt numbers only: never argument values, results or error
messages (which may quote arguments); a failed run's status names the exception type.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar, Token
from dataclasses import replace
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace import ProxyTracerProvider, SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    OTEL_AVAILABLE = True
except ImportError:  # tracing is an optional extra
    OTEL_AVAILABLE = False

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from .records import NewExecution, TaskRecord

__all__ = ["OTEL_AVAILABLE", "TRACER_NAME", "Tracing"]

#: the instrumentation scope of every span Stent makes
TRACER_NAME = "stent"

#: where no span is made: the stored ``traceparent`` of the task running in this context
_passed_on: ContextVar[str | None] = ContextVar("stent_passed_on_traceparent", default=None)


class _PassOn:
    """The no-span stand-in for a task's span: its stored ``traceparent`` is current for the
    length of the block."""

    __slots__ = ("_token", "_traceparent")

    def __init__(self, traceparent: str | None) -> None:
        self._traceparent = traceparent
        self._token: Token[str | None] | None = None

    def __enter__(self) -> None:
        self._token = _passed_on.set(self._traceparent)

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _passed_on.reset(self._token)


class Tracing:
    """An executor's tracer, or nothing.

    Args:
        tracer_provider: an OpenTelemetry ``TracerProvider``. None: the global provider, if
            ``opentelemetry-api`` is installed and a provider is configured (one set after
            the executor was made counts too); else no spans.

    Raises:
        ImportError: a ``tracer_provider`` was given but ``opentelemetry-api`` is missing.
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        self._tracer: Tracer | None = None
        self._follows_global = False
        if not OTEL_AVAILABLE:
            if tracer_provider is not None:
                raise ImportError("tracer_provider needs the opentelemetry-api package: "
                                  "pip install stent-core[tracing]")
            return
        if tracer_provider is None:
            # a proxy: it follows a global provider configured later
            self._tracer = otel_trace.get_tracer(TRACER_NAME)
            self._follows_global = True
        else:
            self._tracer = tracer_provider.get_tracer(TRACER_NAME)
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def off(cls) -> Tracing:
        """A ``Tracing`` that never makes spans (replays)."""
        tracing = cls.__new__(cls)
        tracing._tracer = None
        tracing._follows_global = False
        return tracing

    def _active(self) -> Tracer | None:
        """The tracer to use now; None while there is none, or while only the global provider
        is followed and nobody configured one (its spans would record nothing, at some
        tens of microseconds per task)."""
        tracer = self._tracer
        if tracer is not None and self._follows_global and isinstance(
            otel_trace.get_tracer_provider(), ProxyTracerProvider
        ):
            return None
        return tracer

    @property
    def enabled(self) -> bool:
        """Whether spans are made now."""
        return self._active() is not None

    def current_traceparent(self) -> str | None:
        """The W3C ``traceparent`` to store on a task created now: the current span's (None
        without a valid one); where no span is made, the running task's own stored one."""
        if self._active() is None:
            return _passed_on.get()
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        return carrier.get("traceparent")

    def dispatch_span(self, new: NewExecution) -> contextlib.AbstractContextManager[NewExecution]:
        """A ``stent.dispatch <function>`` span for the length of the block.

        Yields:
            ``new`` with its root task's ``trace_context`` set to the dispatch span (where no
            span is made: to the running task's, if any).
        """
        tracer = self._active()
        if tracer is None:
            passed_on = _passed_on.get()
            if passed_on is not None:
                new = replace(new, root=replace(new.root, trace_context=passed_on))
            return contextlib.nullcontext(new)
        return self._dispatch_span(tracer, new)

    @contextlib.contextmanager
    def _dispatch_span(self, tracer: Tracer, new: NewExecution) -> Iterator[NewExecution]:
        attributes: dict[str, str | int] = {"stent.execution_id": new.id,
                                            "stent.task_id": new.root.id,
                                            "stent.function": new.function}
        with tracer.start_as_current_span(
            f"stent.dispatch {new.function}", kind=SpanKind.PRODUCER, attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                yield replace(new, root=replace(new.root,
                                                trace_context=self.current_traceparent()))
            except Exception as exc:
                _set_error(span, exc)
                raise

    def existing_execution(self, execution_id: str) -> None:
        """The dispatch in progress returned an existing execution (``execution_id`` or
        ``idempotency_key`` reused): say so on its span."""
        if self._active() is None:
            return
        span = otel_trace.get_current_span()
        span.set_attribute("stent.execution_id", execution_id)
        span.set_attribute("stent.task_id", execution_id)
        span.set_attribute("stent.existing_execution", True)

    def task_span(self, task: TaskRecord) -> contextlib.AbstractContextManager[Any]:
        """A ``stent.step <function>`` span around one run of ``task``, a child of the span
        that created it (its stored ``trace_context``), current for the length of the block:
        the steps the task creates meanwhile record it as theirs."""
        tracer = self._active()
        if tracer is None:
            return _PassOn(task.trace_context)
        return self._task_span(tracer, task)

    @contextlib.contextmanager
    def _task_span(self, tracer: Tracer, task: TaskRecord) -> Iterator[Span]:
        parent = (self._propagator.extract({"traceparent": task.trace_context})
                  if task.trace_context else None)
        attributes: dict[str, str | int] = {"stent.execution_id": task.execution_id,
                                            "stent.task_id": task.id,
                                            "stent.attempt": task.attempt,
                                            "stent.function": task.step_name}
        with tracer.start_as_current_span(
            f"stent.step {task.step_name}", context=parent, kind=SpanKind.CONSUMER,
            attributes=attributes, record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except Exception as exc:  # an engine error: the run failed too
                _set_error(span, exc)
                raise

    def task_failed(self, exc: BaseException, *, retrying: bool) -> None:
        """The task run in the current ``stent.step`` span failed with ``exc`` (and will be
        retried, or not)."""
        if self._active() is None:
            return
        span = otel_trace.get_current_span()
        span.set_attribute("stent.retrying", retrying)
        _set_error(span, exc)


def _set_error(span: Span, exc: BaseException) -> None:
    # The type only: an exception's message may quote argument values.
    span.set_attribute("stent.error_type", type(exc).__name__)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
