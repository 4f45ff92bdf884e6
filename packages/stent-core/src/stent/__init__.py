"""Stent: durable functions for Python.

Mark ``async def`` functions with ``@Stent.durable`` and await them like normal calls; every
call inside a running task is persisted as a step, and a workflow resumes after any crash
from its last completed step.
"""

from __future__ import annotations

from .app import Stent
from .backend import Backend, NotificationBackend
from .clock import Clock, SystemClock
from .context import ExecutionContext
from .durable import DurableFunction
from .errors import (
    BackendError,
    DuplicateFunctionError,
    ExecutionCancelledError,
    ExecutionNotFinished,
    ExecutionNotFound,
    ExecutionTimeoutError,
    ExpiryError,
    IdempotencyConflictError,
    NonDeterminismError,
    NotInExecutionContext,
    PayloadTooLargeError,
    RemoteError,
    SchemaVersionError,
    SerializationError,
    SignalTimeoutError,
    StentError,
    StepTimeoutError,
    UnregisteredFunctionError,
)
from .inspection import ExecutionState
from .lifecycle import WorkerLifecycle
from .metrics import MetricsRecorder
from .registry import FunctionRegistry
from .result import Result
from .retry import RetryPolicy

sleep = Stent.sleep

__all__ = [
    "Backend",
    "BackendError",
    "Clock",
    "DuplicateFunctionError",
    "DurableFunction",
    "ExecutionCancelledError",
    "ExecutionContext",
    "ExecutionNotFinished",
    "ExecutionNotFound",
    "ExecutionState",
    "ExecutionTimeoutError",
    "ExpiryError",
    "FunctionRegistry",
    "IdempotencyConflictError",
    "MetricsRecorder",
    "NonDeterminismError",
    "NotInExecutionContext",
    "NotificationBackend",
    "PayloadTooLargeError",
    "RemoteError",
    "Result",
    "RetryPolicy",
    "SchemaVersionError",
    "SerializationError",
    "SignalTimeoutError",
    "Stent",
    "StentError",
    "StepTimeoutError",
    "SystemClock",
    "UnregisteredFunctionError",
    "WorkerLifecycle",
    "sleep",
]
