-- Stent schema for SQLite, version 1.
--
-- Times are UTC unix epoch seconds (REAL; exact to the microsecond until 2106).
-- Tags, retry policies, progress, counters and custom state are JSON text.
-- Every table has an INTEGER PRIMARY KEY "ordinal" (the rowid): insertion order, which is
-- the tie-breaker of every ordering the backend contract defines. An explicit rowid alias is
-- kept stable by VACUUM, unlike the implicit rowid.

CREATE TABLE stent_executions (
    ordinal         INTEGER PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    function        TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    root_task_id    TEXT    NOT NULL,
    args            BLOB    NOT NULL,
    result          BLOB,
    error           BLOB,
    queue           TEXT,
    tags            TEXT    NOT NULL DEFAULT '[]',
    priority        INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT    UNIQUE,
    deadline        REAL,
    created_at      REAL    NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    -- the last 100 events, oldest first: [{"event": ..., "at": iso-8601, ...}, ...]
    progress        TEXT    NOT NULL DEFAULT '[]',
    counters        TEXT    NOT NULL DEFAULT '{}',
    custom_state    TEXT    NOT NULL DEFAULT '{}'
);

-- list_executions (newest first; the rowid rides along as the tie-breaker)
CREATE INDEX stent_executions_created ON stent_executions (created_at);
-- count_executions(state) and cleanup_executions (terminal and finished before a cutoff)
CREATE INDEX stent_executions_state ON stent_executions (state, finished_at);

CREATE TABLE stent_tasks (
    ordinal          INTEGER PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    execution_id     TEXT    NOT NULL,
    parent_id        TEXT,
    parent_attempt   INTEGER NOT NULL,
    seq              INTEGER NOT NULL,
    step_name        TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    args             BLOB    NOT NULL,
    arg_digest       TEXT    NOT NULL,
    result           BLOB,
    error            BLOB,
    queue            TEXT,
    tags             TEXT    NOT NULL DEFAULT '[]',
    priority         INTEGER NOT NULL DEFAULT 0,
    due_at           REAL    NOT NULL,
    worker_id        TEXT,
    lease_expires_at REAL,
    fence            INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 1,
    retries          INTEGER NOT NULL DEFAULT 0,
    crash_count      INTEGER NOT NULL DEFAULT 0,
    retry_policy     TEXT    NOT NULL DEFAULT '{}',
    timeout_s        REAL,
    max_concurrent   INTEGER,
    idempotency_key  TEXT    NOT NULL DEFAULT '',
    created_at       REAL    NOT NULL,
    started_at       REAL,
    finished_at      REAL
);

-- The step key. Root tasks have a NULL parent_id, and NULLs never collide in a UNIQUE index.
-- Also serves load_steps (parent_id, parent_attempt, ordered by seq).
CREATE UNIQUE INDEX stent_tasks_step_key ON stent_tasks (parent_id, parent_attempt, seq);
CREATE INDEX stent_tasks_execution ON stent_tasks (execution_id);
-- claim, first half: pending tasks in claim order. Partial, so finished rows cost nothing.
CREATE INDEX stent_tasks_pending ON stent_tasks (priority DESC, due_at, ordinal)
    WHERE state = 'pending';
-- claim, second half: running tasks whose lease expired (crash recovery).
CREATE INDEX stent_tasks_leased ON stent_tasks (lease_expires_at)
    WHERE state = 'running';

CREATE TABLE stent_dead_letters (
    ordinal      INTEGER PRIMARY KEY,
    task_id      TEXT    NOT NULL UNIQUE,
    execution_id TEXT    NOT NULL,
    step_name    TEXT    NOT NULL,
    queue        TEXT,
    reason       TEXT    NOT NULL,
    error        BLOB,
    created_at   REAL    NOT NULL,
    retries      INTEGER NOT NULL
);

CREATE INDEX stent_dead_letters_created ON stent_dead_letters (created_at);
