-- Stent schema for SQLite, version 2: signals and their waiters, cache/idempotency entries,
-- maintenance leases, and the trace context of tasks.

-- W3C traceparent of the span that created the task (NULL without tracing).
ALTER TABLE stent_tasks ADD COLUMN trace_context TEXT;

-- Signals sent to an execution: per (execution, name) a FIFO queue, in ordinal order.
-- consumed_by is the signal task that received it (NULL: still waiting for a receiver).
CREATE TABLE stent_signals (
    ordinal      INTEGER PRIMARY KEY,
    execution_id TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    consumed_by  TEXT,
    created_at   REAL    NOT NULL
);

-- The oldest unconsumed signal of a name (create_signal_wait). Partial: consumed signals,
-- which only accumulate, are never scanned.
CREATE INDEX stent_signals_unconsumed ON stent_signals (execution_id, name, ordinal)
    WHERE consumed_by IS NULL;
-- cleanup_executions
CREATE INDEX stent_signals_execution ON stent_signals (execution_id);

-- Signal tasks waiting for a signal of a name, served in creation (ordinal) order while their
-- task is pending or waiting; a row goes when its task receives a signal.
CREATE TABLE stent_signal_waiters (
    ordinal      INTEGER PRIMARY KEY,
    task_id      TEXT    NOT NULL UNIQUE,
    execution_id TEXT    NOT NULL,
    name         TEXT    NOT NULL
);

-- send_signal (the oldest waiter of a name) and cleanup_executions (the execution_id prefix)
CREATE INDEX stent_signal_waiters_queue ON stent_signal_waiters (execution_id, name, ordinal);

-- Idempotency/cache entries. task_id owns the key; result is NULL until the owner completes
-- (complete_task stores it, with expires_at = finish time + ttl_s, NULL: never expires).
CREATE TABLE stent_cache (
    key        TEXT    PRIMARY KEY,
    task_id    TEXT    NOT NULL,
    arg_digest TEXT    NOT NULL,
    result     BLOB,
    ttl_s      REAL,
    expires_at REAL,
    created_at REAL    NOT NULL
);

-- complete_task looks up the entries its task owns on every completion: keep it one probe.
CREATE INDEX stent_cache_task ON stent_cache (task_id);
-- cleanup_cache
CREATE INDEX stent_cache_expires ON stent_cache (expires_at) WHERE expires_at IS NOT NULL;

-- Maintenance leases (one scheduler of cleanups at a time, cluster-wide).
CREATE TABLE stent_maintenance (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    lease_until REAL NOT NULL
);
