"""The backend conformance suite: one set of tests every Stent backend must pass.

Subclass :class:`BackendConformance` in a test module and provide a ``backend`` fixture that
yields an initialised backend (``init_db()`` already called) and closes it afterwards::

    import pytest
    import pytest_asyncio
    from stent_testing.conformance import BackendConformance

    class TestMyBackend(BackendConformance):
        @pytest_asyncio.fixture
        async def backend(self, tmp_path):
            b = MyBackend(tmp_path / "db")
            await b.init_db()
            yield b
            await b.close()

(``@pytest.fixture`` is enough under pytest-asyncio's ``auto`` mode.) Every test is marked
``@pytest.mark.asyncio``, so the suite also runs in ``strict`` mode. Each test gets a fresh,
empty backend.

Time: the engine passes every time in (``now``, ``lease_until``, ``due_at``), so the suite
never sleeps; a test's clock is the datetimes it passes, built from
:data:`~.builders.T0` with :func:`~.builders.at`. Stored times must come back as aware UTC
datetimes equal to what was passed in, to within :attr:`BackendConformance.time_tolerance`,
which is **one microsecond** (so a backend keeping UTC epoch seconds as a float, which can
round the last microsecond, passes; one that keeps milliseconds does not). Naive datetimes
(operator input) are read as local time; the tests of that run with the local zone set to
UTC+05:45 where the platform allows.

Known gaps: a backend may list test names it knowingly fails in
:attr:`BackendConformance.expected_failures` (name -> reason); they run as strict ``xfail``,
so fixing one fails the run until its entry is removed.

The tests are grouped by concern, one module each: dispatch (:mod:`.executions`), claims and
leases (:mod:`.claims`), fencing (:mod:`.fencing`), steps and replay keys (:mod:`.steps`),
completion, failure, retry and suspension (:mod:`.outcomes`), what a finished execution's
unfinished tasks become (:mod:`.finishing`), dead letters
(:mod:`.deadletters`), inspection, operator calls and detached records (:mod:`.inspection`),
retention (:mod:`.cleanup`), times (:mod:`.times`), races (:mod:`.concurrency`), batches of
steps (:mod:`.batches`), signals (:mod:`.signals`), execution effects (:mod:`.effects`),
idempotency and cache keys (:mod:`.caching`), the maintenance lease and bounded retention
(:mod:`.maintenance`) and trace context (:mod:`.tracing`).
"""

from __future__ import annotations

from .base import ConformanceBase
from .batches import StepBatchContract
from .builders import T0, at, claim_filter, new_execution, new_id, new_task
from .caching import CacheContract
from .cancellation import CancellationContract
from .claims import ClaimContract
from .cleanup import CleanupContract
from .concurrency import ConcurrencyContract
from .deadletters import DeadLetterContract
from .effects import EffectContract
from .executions import ExecutionContract
from .fencing import FencingContract
from .finishing import FinishedExecutionContract
from .inspection import DetachmentContract, InspectionContract
from .maintenance import MaintenanceContract
from .outcomes import OutcomeContract
from .signals import SignalContract
from .steps import StepContract
from .times import TimeContract
from .tracing import TraceContextContract

__all__ = [
    "T0",
    "BackendConformance",
    "CacheContract",
    "CancellationContract",
    "ClaimContract",
    "CleanupContract",
    "ConcurrencyContract",
    "ConformanceBase",
    "DeadLetterContract",
    "DetachmentContract",
    "EffectContract",
    "ExecutionContract",
    "FencingContract",
    "FinishedExecutionContract",
    "InspectionContract",
    "MaintenanceContract",
    "OutcomeContract",
    "SignalContract",
    "StepBatchContract",
    "StepContract",
    "TimeContract",
    "TraceContextContract",
    "at",
    "claim_filter",
    "new_execution",
    "new_id",
    "new_task",
]


class BackendConformance(
    CancellationContract,
    ExecutionContract,
    ClaimContract,
    FencingContract,
    StepContract,
    OutcomeContract,
    FinishedExecutionContract,
    DeadLetterContract,
    InspectionContract,
    DetachmentContract,
    CleanupContract,
    TimeContract,
    ConcurrencyContract,
    StepBatchContract,
    SignalContract,
    EffectContract,
    CacheContract,
    MaintenanceContract,
    TraceContextContract,
):
    """Every conformance test of the ``stent.Backend`` contract.

    Subclass it (the subclass name must start with ``Test`` for pytest to collect it) and
    provide a ``backend`` fixture yielding a fresh backend on which ``init_db()`` has been
    awaited; close it after the ``yield``. The groups it is made of (``ClaimContract``,
    ``FencingContract``, ...) can also be subclassed one at a time.

    Attributes:
        time_tolerance: how far a stored time may come back from the one passed in
            (default one microsecond).
        expected_failures: test names (without parameters) this backend knowingly fails,
            mapped to the reason; run as strict ``xfail``.
    """
