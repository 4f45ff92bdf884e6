"""Typed errors raised by Stent. All derive from :class:`StentError`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class StentError(Exception):
    """Base class of every error Stent raises."""


class UnregisteredFunctionError(StentError):
    """No durable function with this name is registered."""

    def __init__(self, name: str, registered: Iterable[str] = ()) -> None:
        self.name = name
        self.registered = sorted(registered)
        # the likeliest intended names first (a typo, a moved module), then the rest
        close = difflib.get_close_matches(name, self.registered, n=5, cutoff=0.5)
        ordered = close + [n for n in self.registered if n not in close]
        shown = ", ".join(ordered[:20]) or "none"
        if len(self.registered) > 20:
            shown += f", ... ({len(self.registered)} in all)"
        super().__init__(
            f"no durable function named {name!r} is registered in this process "
            f"(registered: {shown}). Import the module that defines it, or pass name=..."
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.registered))


class DuplicateFunctionError(StentError):
    """A durable-function name is already taken by another function."""


class SerializationError(StentError, TypeError):
    """A value cannot be encoded (or decoded) exactly by the configured serializer."""


class PayloadTooLargeError(SerializationError, ValueError):
    """An encoded payload is larger than ``max_payload_bytes``."""


class NonDeterminismError(StentError):
    """A replayed step does not match the call recorded at its step key."""


class ExecutionNotFound(StentError, LookupError):
    """No execution has this id."""


class ExecutionNotFinished(StentError):
    """The execution has not reached a terminal state yet."""


class ExpiryError(StentError, TimeoutError):
    """``wait_for(..., expiry=...)`` ran out of time before the execution finished."""


class ExecutionTimeoutError(StentError):
    """The execution's ``max_duration`` passed before it finished."""


class ExecutionCancelledError(StentError):
    """The execution was cancelled."""


class StepTimeoutError(StentError):
    """One attempt of a step ran longer than its ``timeout``."""


class SignalTimeoutError(StentError, TimeoutError):
    """``wait_for_signal(..., timeout=...)`` ran out of time."""


class IdempotencyConflictError(StentError, ValueError):
    """An idempotency key (a dispatch's ``idempotency_key`` or ``execution_id``, or the key
    of an ``idempotent``/``cached`` function) was reused with other arguments: the stored
    result belongs to another call, so it is not handed out."""


class NotInExecutionContext(StentError, RuntimeError):
    """A task-only helper was called outside a running task."""


class RemoteError(StentError):
    """An error whose class could not be rebuilt in this process.

    Attributes:
        type_name: ``module:qualname`` of the original exception class.
        message: ``str()`` of the original exception.
        remote_traceback: the formatted traceback where it was raised.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.remote_traceback))


class BackendError(StentError):
    """The storage backend failed; the message never contains a password."""


class SchemaVersionError(BackendError):
    """The database schema is newer than this code understands."""


class LeaseLostError(StentError):
    """This worker no longer holds the task's lease (its fence token is stale).

    Internal: raised inside a task whose writes were fenced out, so that it stops.
    """
