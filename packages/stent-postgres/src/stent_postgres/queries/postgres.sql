-- Named queries of PostgresBackend. Each starts at a "-- name --" line; see migrations.py.
-- Parameters are positional ($1, $2, ...), listed under each header.
--
-- Every statement below is its own transaction (autocommit) unless its caller says otherwise,
-- and runs at READ COMMITTED. Three rules keep that safe without a stronger isolation level:
--
-- * Every worker write is fenced in its WHERE clause (id, fence, state = 'running'). A plain
--   UPDATE re-checks its WHERE clause on the newest version of a row it had to wait for, so a
--   worker whose lease was taken over changes nothing.
-- * A decision that depends on another row reads that row with a locking clause that
--   conflicts with the writer's lock (FOR NO KEY UPDATE / FOR SHARE): such a read waits and
--   returns the newest committed version, where a plain read sees the statement's snapshot,
--   which may be older than a transaction that committed while this one waited. (FOR KEY
--   SHARE is not enough: it does not wait for an update that leaves the key alone, and
--   returns the old version.) Where that cannot be arranged, the decision is a later
--   statement of a PL/pgSQL function, which sees a fresh snapshot (stent_finish_task).
-- * Locks are taken in one order: task rows from ancestors to descendants (a finished child
--   updates its parent only when the parent is 'waiting', which no worker holds), then
--   execution rows, then stent_concurrency rows last. Claims never wait for a task row (SKIP
--   LOCKED); they wait only for counter rows (taken first, in name order) and for the rows
--   of executions they start. So no two transactions can wait for each other. (A dead-letter
--   replay locks the execution row first, then only failed task rows and the rows its
--   failure cancelled, which no worker holds.)
-- * Cancellation and deadlines (schema/postgres/0002_cancellation.sql): a worker call reads
--   its execution's state only after locking its task (a later statement, or the VOLATILE
--   stent_live_execution); a cancellation or time-out locks every pending and running task
--   of the execution before the execution row. A cancelling execution is settled to
--   'cancelled' under its row's FOR UPDATE lock, by a later statement that sees every
--   sibling that finished before (stent_settle_execution).
--
-- Progress entries are appended in SQL; the log keeps its last 100 entries (as the reference
-- backend does) by dropping the oldest one as a new one goes in.

-- lock_migrations --
-- One migrator per schema at a time; the lock is released when the transaction ends.
-- $1: the lock's class (a constant of this package), $2: schema name.
SELECT pg_advisory_xact_lock($1::integer, hashtext($2::text));

-- schema_exists --
-- $1: schema name.
SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1);

-- create_schema --
-- The one statement with an identifier in it: {schema} is replaced by the backend's schema
-- name, which was checked against an identifier pattern and is double-quoted
-- (_pg_dsn.validate_schema). Run only when the schema is missing (CREATE SCHEMA checks the
-- CREATE privilege on the database even when the schema exists).
CREATE SCHEMA IF NOT EXISTS {schema};

-- drop_schema --
-- For the test kit (stent_testing.pg), which gives every test a schema of its own; {schema}
-- as in create_schema.
DROP SCHEMA IF EXISTS {schema} CASCADE;

-- version_table_exists --
SELECT to_regclass('stent_schema_version') IS NOT NULL;

-- create_version_table --
CREATE TABLE IF NOT EXISTS stent_schema_version (
    version    integer     PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- recorded_version --
SELECT coalesce(max(version), 0) FROM stent_schema_version;

-- record_version --
-- $1: version.
INSERT INTO stent_schema_version (version) VALUES ($1);

-- insert_execution --
-- Dispatch: the execution and its root task in one statement, unless the id or the
-- idempotency key is taken (ON CONFLICT without a target covers both unique constraints).
-- $1 id, $2 function, $3 args, $4 queue, $5 tags, $6 priority, $7 idempotency_key,
-- $8 deadline, $9 now, $10 progress ([dispatched entry]);
-- root task: $11 id, $12 parent_id, $13 parent_attempt, $14 seq, $15 step_name, $16 kind,
-- $17 state, $18 args, $19 arg_digest, $20 result, $21 queue, $22 tags, $23 priority,
-- $24 due_at, $25 retry_policy, $26 timeout_s, $27 max_concurrent, $28 idempotency_key,
-- $29 finished_at, $30 error, $31 attempt, $32 retries, $33 trace_context.
WITH execution AS (
    INSERT INTO stent_executions (
        id, function, state, root_task_id, args, queue, tags, priority, idempotency_key,
        deadline, created_at, progress)
    VALUES ($1, $2, 'pending', $11, $3, $4, $5, $6, $7, $8, $9, $10::jsonb)
    ON CONFLICT DO NOTHING
    RETURNING id
),
root AS (
    INSERT INTO stent_tasks (
        id, execution_id, parent_id, parent_attempt, seq, step_name, kind, state, args,
        arg_digest, result, queue, tags, priority, due_at, retry_policy, timeout_s,
        max_concurrent, idempotency_key, created_at, finished_at, error, attempt, retries,
        trace_context)
    SELECT $11, execution.id, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24,
           $25::jsonb, $26, $27, $28, $9, $29, $30, $31, $32, $33
    FROM execution
    RETURNING step_name, max_concurrent
),
counter AS (
    -- A capped function has a counter row from its first capped task on.
    INSERT INTO stent_concurrency (step_name)
    SELECT step_name FROM root WHERE max_concurrent IS NOT NULL
    ON CONFLICT DO NOTHING
)
-- The id wins over the idempotency key, as in the reference backend. An execution that a
-- concurrent dispatch committed after this statement began is not seen here (NULL, NULL):
-- the caller looks again with execution_id_taken.
SELECT (SELECT id FROM execution) AS created,
       coalesce((SELECT id FROM stent_executions WHERE id = $1),
                (SELECT id FROM stent_executions WHERE idempotency_key = $7)) AS existing;

-- execution_id_taken --
-- $1 id, $2 idempotency_key.
SELECT coalesce((SELECT id FROM stent_executions WHERE id = $1),
                (SELECT id FROM stent_executions WHERE idempotency_key = $2));

-- claim --
-- Lease up to $6 due, eligible tasks in claim order (priority DESC, due_at, ordinal), in one
-- statement. $1 worker_id, $2 registered names, $3 queues (NULL: every queue),
-- $4 whether the default queue is wanted, $5 worker tags (NULL: takes every task), $6 limit,
-- $7 now, $8 lease_until, $9 progress ([running entry]).
--
-- Uncapped tasks come from their partial indexes in claim order, locked with SKIP LOCKED
-- under the LIMIT (so concurrent claimers take different rows, and none takes more than it
-- asked for). A capped function (max_concurrent) is claimed through its counter row, locked
-- (in name order) before any of its tasks: the claim waits for a claimer or a finishing task
-- that holds it, briefly (they are single statements; every other transaction locks a
-- counter row last and no claim waits for a task row, so this wait cannot close a cycle).
-- Then its lapsed holders (lease expired: they no longer count) lose their slots, and at
-- most (cap - live holders) of its claimable tasks are locked. Only then are the candidates
-- of both kinds merged in claim order and cut at $6, so a function at its cap never starves
-- the work behind it. No COUNT over the tasks table decides anything: the counter does.
--
-- Tasks of executions that are not live (cancelling, or finished) are never taken: each
-- candidate's execution is read afresh by stent_live_execution (schema/postgres), which is
-- called again when the claim re-checks a row that changed after it was read. The
-- transaction that stops an execution (cancellation, time-out) cancels its pending tasks
-- and rewrites its running ones, so a claim that reaches one of them after that commit
-- re-checks it and skips it; while that transaction runs, the rows are locked (SKIP LOCKED).
WITH caps AS (
    -- Capped functions with a claimable task for this worker, and the cap of the first one.
    SELECT c.step_name, c.holders, head.max_concurrent AS head_cap
    FROM stent_concurrency AS c
    CROSS JOIN LATERAL (
        SELECT t.max_concurrent
        FROM stent_tasks AS t
        WHERE t.step_name = c.step_name
          AND t.max_concurrent IS NOT NULL
          AND t.state IN ('pending', 'running')
          AND ((t.state = 'pending' AND t.due_at <= $7)
               OR (t.state = 'running' AND t.lease_expires_at < $7))
          AND stent_claimable(t.kind, t.step_name, t.queue, t.tags, $2, $3, $4, $5)
          AND stent_live_execution(t.execution_id) IS NOT NULL
        ORDER BY t.priority DESC, t.due_at, t.ordinal
        LIMIT 1
    ) AS head
    ORDER BY c.step_name
    FOR NO KEY UPDATE OF c
),
lapsed AS (
    -- Slot holders whose lease expired. Locked, so the set cannot change under us; one that
    -- another transaction holds (it is finishing) keeps counting until it gives its slot back.
    SELECT t.id, t.step_name
    FROM caps
    JOIN stent_tasks AS t ON t.step_name = caps.step_name
    WHERE t.slot AND t.state = 'running' AND t.lease_expires_at < $7
      AND t.max_concurrent IS NOT NULL
    FOR NO KEY UPDATE OF t SKIP LOCKED
),
room AS (
    SELECT caps.step_name, caps.head_cap,
           caps.holders - (SELECT count(*) FROM lapsed WHERE lapsed.step_name = caps.step_name)
               AS live
    FROM caps
),
capped AS (
    SELECT pick.*, room.live,
           row_number() OVER (PARTITION BY pick.step_name
                              ORDER BY pick.priority DESC, pick.due_at, pick.ordinal) AS nth
    FROM room
    CROSS JOIN LATERAL (
        SELECT t.id, t.step_name, t.max_concurrent, t.priority, t.due_at, t.ordinal
        FROM stent_tasks AS t
        WHERE t.step_name = room.step_name
          AND t.max_concurrent IS NOT NULL
          AND t.state IN ('pending', 'running')
          AND ((t.state = 'pending' AND t.due_at <= $7)
               OR (t.state = 'running' AND t.lease_expires_at < $7))
          AND stent_claimable(t.kind, t.step_name, t.queue, t.tags, $2, $3, $4, $5)
          AND stent_live_execution(t.execution_id) IS NOT NULL
        ORDER BY t.priority DESC, t.due_at, t.ordinal
        LIMIT least($6, greatest(room.head_cap - room.live, 0))
        FOR NO KEY UPDATE OF t SKIP LOCKED
    ) AS pick
),
ready AS (
    SELECT t.id, t.step_name, t.max_concurrent, t.priority, t.due_at, t.ordinal
    FROM stent_tasks AS t
    WHERE t.state = 'pending' AND t.max_concurrent IS NULL AND t.due_at <= $7
      AND stent_claimable(t.kind, t.step_name, t.queue, t.tags, $2, $3, $4, $5)
      AND stent_live_execution(t.execution_id) IS NOT NULL
    ORDER BY t.priority DESC, t.due_at, t.ordinal
    LIMIT $6
    FOR NO KEY UPDATE OF t SKIP LOCKED
),
recovered AS (
    -- Crash recovery: running tasks whose lease expired (rare; usually no row at all).
    SELECT t.id, t.step_name, t.max_concurrent, t.priority, t.due_at, t.ordinal
    FROM stent_tasks AS t
    WHERE t.state = 'running' AND t.lease_expires_at < $7 AND t.max_concurrent IS NULL
      AND stent_claimable(t.kind, t.step_name, t.queue, t.tags, $2, $3, $4, $5)
      AND stent_live_execution(t.execution_id) IS NOT NULL
    ORDER BY t.priority DESC, t.due_at, t.ordinal
    LIMIT $6
    FOR NO KEY UPDATE OF t SKIP LOCKED
),
picked AS (
    SELECT candidate.id, candidate.step_name, candidate.max_concurrent
    FROM (
        SELECT id, step_name, max_concurrent, priority, due_at, ordinal FROM ready
        UNION ALL
        SELECT id, step_name, max_concurrent, priority, due_at, ordinal FROM recovered
        UNION ALL
        SELECT id, step_name, max_concurrent, priority, due_at, ordinal FROM capped
        WHERE live + nth <= max_concurrent
    ) AS candidate
    ORDER BY candidate.priority DESC, candidate.due_at, candidate.ordinal
    LIMIT $6
),
leased AS (
    -- Taking over a running task is a crash recovery, charged to the task unless it has an
    -- unfinished step at its current attempt: then it was only awaiting that step when its
    -- worker died (the step key constraint's index finds its steps). A task charged before
    -- is charged again only if the run that died was marked alone (0005_alone.sql).
    UPDATE stent_tasks AS t
    SET crash_count = t.crash_count + CASE
            WHEN t.state = 'running' AND (t.crash_count = 0 OR t.alone) AND NOT EXISTS (
                SELECT 1 FROM stent_tasks AS step
                WHERE step.parent_id = t.id AND step.parent_attempt = t.attempt
                  AND step.state NOT IN ('completed', 'failed', 'cancelled'))
            THEN 1 ELSE 0 END,
        state = 'running',
        fence = t.fence + 1,
        worker_id = $1,
        lease_expires_at = $8,
        started_at = coalesce(t.started_at, $7),
        slot = t.max_concurrent IS NOT NULL,
        alone = false
    FROM picked
    WHERE t.id = picked.id
    RETURNING t.*
),
unslotted AS (
    -- Lapsed holders not claimed again give their slot back (a row is updated at most once
    -- per statement: these and the leased rows are disjoint).
    UPDATE stent_tasks AS t
    SET slot = false
    FROM lapsed
    WHERE t.id = lapsed.id AND NOT EXISTS (SELECT 1 FROM picked WHERE picked.id = lapsed.id)
),
counted AS (
    -- A lapsed holder claimed again keeps its slot (+1 -1); new holders +1; the rest -1.
    UPDATE stent_concurrency AS c
    SET holders = c.holders + delta.n
    FROM (
        SELECT change.step_name, sum(change.n)::integer AS n
        FROM (
            SELECT step_name, 1 AS n FROM picked WHERE max_concurrent IS NOT NULL
            UNION ALL
            SELECT step_name, -1 FROM lapsed
        ) AS change
        GROUP BY change.step_name
    ) AS delta
    WHERE c.step_name = delta.step_name AND delta.n <> 0
),
started AS (
    UPDATE stent_executions AS e
    SET state = 'running',
        started_at = $7,
        progress = CASE WHEN jsonb_array_length(e.progress) >= 100 THEN e.progress - 0
                        ELSE e.progress END || $9::jsonb
    FROM leased
    WHERE leased.parent_id IS NULL AND e.id = leased.execution_id AND e.state = 'pending'
)
SELECT * FROM leased ORDER BY priority DESC, due_at, ordinal;

-- insert_step --
-- Insert-if-absent on the step key, only while the parent is held at its fence. The parent
-- is read FOR SHARE: a claim that would take it over (or a suspension) must wait for this
-- insert to commit, so no child is ever added under a stale fence. In the same statement:
-- a step born running under a lease of a capped function holds a slot (as in the reference
-- backend, a lease given by the engine is not checked against the cap); a step born failed
-- with a reason ($30) gets its dead letter; a step born pending with retries > 0 (a retry
-- waiting for due_at) is logged like any retry.
-- No step starts under an execution that is not live (cancelling or finished): the guard
-- calls stent_live_execution after the parent's row is locked, so it reads the execution
-- afresh even when this statement waited for a cancellation that had locked the parent
-- (stent_freeze_execution), whose commit its own snapshot predates.
-- Returns the new row (created = true) or the row already at the key (created = false);
-- nothing when the parent is not held, when its execution is not live, or when the key was
-- taken by a transaction that committed after this statement began (the caller tells those
-- apart).
-- $1 parent_id, $2 parent_fence, $3 id, $4 parent_attempt, $5 seq, $6 step_name, $7 kind,
-- $8 state, $9 args, $10 arg_digest, $11 result, $12 queue, $13 tags, $14 priority,
-- $15 due_at, $16 retry_policy, $17 timeout_s, $18 max_concurrent, $19 idempotency_key,
-- $20 now, $21 finished_at, $22 worker_id, $23 lease_expires_at, $24 fence, $25 started_at,
-- $26 slot, $27 error, $28 attempt, $29 retries, $30 dead-letter reason, $31 now (ISO text),
-- $32 trace_context.
WITH parent AS MATERIALIZED (
    SELECT id, execution_id
    FROM stent_tasks
    WHERE id = $1 AND fence = $2 AND state = 'running'
    FOR SHARE
),
live_parent AS MATERIALIZED (
    SELECT id, execution_id FROM parent
    WHERE stent_live_execution(parent.execution_id) IS NOT NULL
),
inserted AS (
    INSERT INTO stent_tasks (
        id, execution_id, parent_id, parent_attempt, seq, step_name, kind, state, args,
        arg_digest, result, queue, tags, priority, due_at, retry_policy, timeout_s,
        max_concurrent, idempotency_key, created_at, finished_at, worker_id,
        lease_expires_at, fence, started_at, slot, error, attempt, retries, trace_context)
    SELECT $3, live_parent.execution_id, $1, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
           $15, $16::jsonb, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $32
    FROM live_parent
    ON CONFLICT (parent_id, parent_attempt, seq) DO NOTHING
    RETURNING *
),
dead AS (
    INSERT INTO stent_dead_letters AS d (
        task_id, execution_id, step_name, queue, reason, error, created_at, retries)
    SELECT id, execution_id, step_name, queue, $30, error, $20, retries
    FROM inserted
    WHERE inserted.state = 'failed' AND $30::text IS NOT NULL
    ON CONFLICT (task_id) DO UPDATE SET
        execution_id = excluded.execution_id,
        step_name = excluded.step_name,
        queue = excluded.queue,
        reason = excluded.reason,
        error = excluded.error,
        created_at = excluded.created_at,
        retries = excluded.retries
),
logged AS (
    UPDATE stent_executions AS e
    SET progress = CASE WHEN jsonb_array_length(e.progress) >= 100 THEN e.progress - 0
                        ELSE e.progress END
                   || jsonb_build_array(jsonb_build_object(
                          'event', 'retrying', 'at', $31::text, 'task_id', inserted.id,
                          'step', inserted.step_name, 'attempt', inserted.attempt))
    FROM inserted
    WHERE inserted.state = 'pending' AND inserted.retries > 0
      AND e.id = inserted.execution_id
    RETURNING e.id
),
counter AS (
    -- A capped function has a counter row from its first capped task on (no lock taken
    -- when it exists already).
    INSERT INTO stent_concurrency (step_name)
    SELECT step_name FROM inserted WHERE max_concurrent IS NOT NULL AND NOT slot
    ON CONFLICT DO NOTHING
),
holder AS (
    -- Last lock of the statement (see the header): after "logged".
    INSERT INTO stent_concurrency AS c (step_name, holders)
    SELECT step_name, 1 FROM inserted
    WHERE slot AND (SELECT count(*) FROM logged) >= 0
    ON CONFLICT (step_name) DO UPDATE SET holders = c.holders + 1
)
SELECT true AS created, inserted.* FROM inserted
UNION ALL
SELECT false AS created, t.*
FROM live_parent
JOIN stent_tasks AS t
    ON t.parent_id = live_parent.id AND t.parent_attempt = $4 AND t.seq = $5
WHERE NOT EXISTS (SELECT 1 FROM inserted);

-- held_task_execution_state --
-- The state of the execution of a task held at a fence: no row when the task is not held
-- (NULL when its execution is unknown). $1 id, $2 fence.
SELECT e.state
FROM stent_tasks AS t
LEFT JOIN stent_executions AS e ON e.id = t.execution_id
WHERE t.id = $1 AND t.fence = $2 AND t.state = 'running';

-- task_by_step_key --
-- $1 parent_id, $2 parent_attempt, $3 seq.
SELECT * FROM stent_tasks WHERE parent_id = $1 AND parent_attempt = $2 AND seq = $3;

-- create_steps --
-- Many children of one parent in one call: stent_create_steps (schema/postgres), fenced on
-- the parent once. Rows in input order, each with whether it was created; none when the
-- parent is not held at its fence or its execution is not live (the caller tells those
-- apart with held_task_execution_state).
-- $1 parent_id, $2 parent_fence, $3 now, $4 now (ISO text); one array per field of the
-- children: $5 ids, $6 parent_attempts, $7 seqs, $8 step_names, $9 kinds, $10 states,
-- $11 args, $12 arg_digests, $13 results, $14 errors, $15 queues, $16 tags (a JSON array of
-- arrays), $17 priorities, $18 due_ats, $19 retry policies (a JSON array), $20 timeouts,
-- $21 max_concurrents, $22 idempotency_keys, $23 attempts, $24 retries, $25 dead-letter
-- reasons, $26 trace_contexts.
SELECT r.o_created AS created, (r.o_task).*
FROM stent_create_steps($1, $2, $3, $4, $5::text[], $6::integer[], $7::integer[],
                        $8::text[], $9::text[], $10::text[], $11::bytea[], $12::text[],
                        $13::bytea[], $14::bytea[], $15::text[], $16::jsonb, $17::integer[],
                        $18::timestamptz[], $19::jsonb, $20::double precision[],
                        $21::integer[], $22::text[], $23::integer[], $24::integer[],
                        $25::text[], $26::text[]) AS r
ORDER BY r.o_n;

-- create_signal_wait --
-- A signal step at its key unless taken, consuming the oldest buffered signal of the name or
-- joining its waiters: stent_create_signal_wait (schema/postgres), serialised with
-- send_signal per execution. The new row (created) or the one at the key; none when the
-- parent is not held at its fence or its execution is not live.
-- $1 parent_id, $2 parent_fence, $3 id, $4 parent_attempt, $5 seq, $6 step_name, $7 kind,
-- $8 state, $9 args, $10 arg_digest, $11 result, $12 error, $13 queue, $14 tags,
-- $15 priority, $16 due_at, $17 retry_policy, $18 timeout_s, $19 max_concurrent,
-- $20 idempotency_key, $21 attempt, $22 retries, $23 trace_context, $24 signal name, $25 now.
SELECT r.o_created AS created, (r.o_task).*
FROM stent_create_signal_wait($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                              $14::text[], $15, $16, $17::jsonb, $18, $19, $20, $21, $22,
                              $23, $24, $25) AS r;

-- send_signal --
-- Deliver to the oldest live waiter of the name (its id), or keep the signal (''); NULL when
-- there is no such execution: stent_send_signal (schema/postgres).
-- $1 execution_id, $2 name, $3 payload, $4 now.
SELECT stent_send_signal($1, $2, $3, $4);

-- record_effect --
-- A born-completed step inserted at its key (fenced on the parent, as insert_step) and, only
-- if it was inserted, its effect applied to the execution in the same statement: counter $27
-- += $28 (kind $26 = 'increment') or custom state $27 = $29 (kind 'set_state'). The
-- execution row is updated after the task rows are locked (lock order); an UPDATE that waits
-- for a concurrent writer of the row re-evaluates its SET on the newest version, so
-- concurrent increments add up. Returns as insert_step does (no row: the caller tells why).
-- $1 parent_id, $2 parent_fence, $3 id, $4 parent_attempt, $5 seq, $6 step_name, $7 kind,
-- $8 state, $9 args, $10 arg_digest, $11 result, $12 queue, $13 tags, $14 priority,
-- $15 due_at, $16 retry_policy, $17 timeout_s, $18 max_concurrent, $19 idempotency_key,
-- $20 now, $21 finished_at (and started_at), $22 error, $23 attempt, $24 retries,
-- $25 trace_context, $26 effect kind, $27 counter or state name, $28 delta, $29 value (JSON
-- text).
WITH parent AS MATERIALIZED (
    SELECT id, execution_id
    FROM stent_tasks
    WHERE id = $1 AND fence = $2 AND state = 'running'
    FOR SHARE
),
live_parent AS MATERIALIZED (
    SELECT id, execution_id FROM parent
    WHERE stent_live_execution(parent.execution_id) IS NOT NULL
),
inserted AS (
    INSERT INTO stent_tasks (
        id, execution_id, parent_id, parent_attempt, seq, step_name, kind, state, args,
        arg_digest, result, queue, tags, priority, due_at, retry_policy, timeout_s,
        max_concurrent, idempotency_key, created_at, finished_at, started_at, error, attempt,
        retries, trace_context)
    SELECT $3, live_parent.execution_id, $1, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
           $15, $16::jsonb, $17, $18, $19, $20, $21, $21, $22, $23, $24, $25
    FROM live_parent
    ON CONFLICT (parent_id, parent_attempt, seq) DO NOTHING
    RETURNING *
),
applied AS (
    UPDATE stent_executions AS e
    SET counters = CASE WHEN $26::text = 'increment'
                        THEN e.counters || jsonb_build_object(
                                 $27::text, coalesce((e.counters ->> $27::text)::bigint, 0)
                                            + $28::bigint)
                        ELSE e.counters END,
        custom_state = CASE WHEN $26::text = 'set_state'
                            THEN e.custom_state || jsonb_build_object($27::text, $29::jsonb)
                            ELSE e.custom_state END
    FROM inserted
    WHERE e.id = inserted.execution_id
)
SELECT true AS created, inserted.* FROM inserted
UNION ALL
SELECT false AS created, t.*
FROM live_parent
JOIN stent_tasks AS t
    ON t.parent_id = live_parent.id AND t.parent_attempt = $4 AND t.seq = $5
WHERE NOT EXISTS (SELECT 1 FROM inserted);

-- cache_claim --
-- Look up or take an idempotency/cache key: stent_cache_claim (schema/postgres).
-- $1 key, $2 task_id, $3 arg_digest, $4 ttl_s, $5 now, $6 progress ([cache_hit entry]).
SELECT o_status AS status, o_result AS result, o_owner AS owner_task_id,
       o_arg_digest AS arg_digest
FROM stent_cache_claim($1, $2, $3, $4, $5, $6::jsonb);

-- cleanup_cache --
-- Delete up to $2 cache entries whose result expired before $1, oldest first. The outer
-- WHERE clause is re-checked on the newest version of a row a claimer took over meanwhile
-- (its expires_at is then NULL), so a fresh owner's entry is never deleted.
WITH gone AS (
    DELETE FROM stent_cache AS c
    USING (SELECT key FROM stent_cache WHERE expires_at < $1
           ORDER BY expires_at LIMIT $2) AS doomed
    WHERE c.key = doomed.key AND c.expires_at < $1
    RETURNING 1
)
SELECT count(*) FROM gone;

-- acquire_maintenance --
-- Take or renew the lease $1 for holder $2 until $3: inserted when missing, else updated
-- only if it expired before $4 or $2 holds it already (ON CONFLICT locks the row and checks
-- that on its newest version, so two racing holders cannot both get it). A row comes back
-- when the lease is $2's.
INSERT INTO stent_maintenance AS m (name, holder, lease_until)
VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until
WHERE m.holder = excluded.holder OR m.lease_until < $4
RETURNING true;

-- load_steps --
-- $1 parent_id, $2 attempt.
SELECT id, seq, step_name, kind, arg_digest, state, result, error, due_at
FROM stent_tasks
WHERE parent_id = $1 AND parent_attempt = $2
ORDER BY seq;

-- complete_task --
-- Record a result (fenced), wake a suspended parent or complete the execution, give back the
-- slot: one call to stent_finish_task (schema/postgres), whose statements each see a fresh
-- snapshot, which is what makes the wake-up impossible to lose (see suspend_task).
-- $1 id, $2 fence, $3 result, $4 now, $5 progress ([completed entry]).
SELECT stent_finish_task($1, $2, 'completed', $3, NULL, $4, NULL, $5::jsonb);

-- fail_task --
-- Record a final failure (fenced), with a dead letter when $4 (the reason) is not NULL; wake
-- the parent or fail the execution; give back the slot (see complete_task).
-- $1 id, $2 fence, $3 error, $4 dead-letter reason, $5 now, $6 progress ([failed entry]).
SELECT stent_finish_task($1, $2, 'failed', NULL, $3, $5, $4, $6::jsonb);

-- retry_task --
-- Schedule the next attempt (fenced), log it, give back the slot; in an execution that is not
-- live, cancel the task instead: stent_retry_task (schema/postgres), which locks the task
-- before it reads the execution (see 0002_cancellation.sql).
-- $1 id, $2 fence, $3 error, $4 due_at, $5 now, $6 now (ISO text, for the progress entry),
-- $7 progress ([cancelled entry], if the cancellation settles with it).
SELECT stent_retry_task($1, $2, $3, $4, $5, $6, $7::jsonb);

-- mark_alone --
-- Whether the running task's current run ($2, fenced) is alone on its worker ($3).
UPDATE stent_tasks SET alone = $3 WHERE id = $1 AND fence = $2 AND state = 'running'
RETURNING true;

-- release_task --
-- Give a running task back (fenced): pending, same attempt; cancelled in an execution that
-- is not live. $1 id, $2 fence, $3 now, $4 progress ([cancelled entry]).
SELECT stent_release_task($1, $2, $3, $4::jsonb);

-- suspend_task --
-- Drop the lease of a task waiting on $3 (fenced): 'waiting', or 'pending' at once if one of
-- them has already finished (no lost wake-up: see stent_suspend_task); cancelled in an
-- execution that is not live. $1 id, $2 fence, $3 awaited ids, $4 now, $5 now (ISO text),
-- $6 progress ([cancelled entry]).
SELECT stent_suspend_task($1, $2, $3::text[], $4, $5, $6::jsonb);

-- renew_leases --
-- Extend the leases of ($2[i], $3[i]) held by worker $1 until $4; returns the ids renewed.
-- Tasks of executions that are not live are cancelled instead (at $4, the time the reference
-- backend uses), and so reported lost. $5 progress ([cancelled entry] at $4).
SELECT stent_renew_leases($1, $2::text[], $3::integer[], $4, $5::jsonb) AS id;

-- cancel_task --
-- A held task stopped for its execution's cancellation (fenced): cancelled, its suspended
-- parent woken, its execution settled, its slot given back.
-- $1 id, $2 fence, $3 now, $4 progress ([cancelled entry]).
SELECT stent_cancel_task($1, $2, $3, $4::jsonb);

-- cancel_execution --
-- $1 id, $2 error, $3 now, $4 progress ([cancelling entry]), $5 progress ([cancelled entry]).
-- Returns the execution's state afterwards, NULL when there is none.
SELECT stent_cancel_execution($1, $2, $3, $4::jsonb, $5::jsonb);

-- expire_executions --
-- $1 error, $2 now, $3 limit, $4 progress ([timed_out entry]), $5 progress ([cancelled
-- entry]). Returns the ids of the executions timed out.
SELECT stent_expire_executions($1, $2, $3, $4::jsonb, $5::jsonb) AS id;

-- get_outcomes --
-- $1 task ids.
SELECT id, state, result, error
FROM stent_tasks
WHERE id = ANY ($1::text[]) AND state IN ('completed', 'failed', 'cancelled');

-- get_execution --
-- $1 id.
SELECT * FROM stent_executions WHERE id = $1;

-- list_executions --
-- $1 state (NULL: all), $2 limit, $3 offset.
SELECT * FROM stent_executions
WHERE $1::text IS NULL OR state = $1
ORDER BY created_at DESC, ordinal DESC
LIMIT $2 OFFSET $3;

-- get_task --
-- $1 id.
SELECT * FROM stent_tasks WHERE id = $1;

-- update_task --
-- An operator override (see the deployment guide): stent_update_task (schema/postgres).
-- $1 id, $2 state, $3 worker_id, $4 lease_expires_at, $5 due_at, $6 priority, $7 queue,
-- $8 tags, $9 retries, $10 crash_count. Returns the new fence, NULL for an unknown task.
SELECT stent_update_task($1, $2, $3, $4, $5, $6, $7, $8, $9, $10);

-- list_tasks_for_execution --
-- $1 execution_id.
SELECT * FROM stent_tasks WHERE execution_id = $1 ORDER BY ordinal;

-- count_tasks --
-- $1 queue (NULL: every queue), $2 state (NULL: every state).
SELECT count(*) FROM stent_tasks
WHERE ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR state = $2);

-- count_executions --
-- $1 state (NULL: every state).
SELECT count(*) FROM stent_executions WHERE $1::text IS NULL OR state = $1;

-- queue_depth --
-- $1 queue (NULL: the default queue).
SELECT count(*) FROM stent_tasks WHERE state = 'pending' AND queue IS NOT DISTINCT FROM $1;

-- cleanup_executions --
-- Delete up to $2 (NULL: every) terminal executions finished before $1, oldest first, with
-- their tasks, dead letters, signals, signal waiters and the cache entries their tasks own
-- without a result: stent_cleanup_executions (schema/postgres), one statement per table.
SELECT stent_cleanup_executions($1, $2);

-- cleanup_dead_letters --
-- Delete up to $2 (NULL: every) dead letters written before $1, oldest first.
WITH gone AS (
    DELETE FROM stent_dead_letters AS d
    USING (SELECT task_id FROM stent_dead_letters WHERE created_at < $1
           ORDER BY created_at LIMIT $2) AS doomed
    WHERE d.task_id = doomed.task_id AND d.created_at < $1
    RETURNING 1
)
SELECT count(*) FROM gone;

-- list_dead_letters --
-- Newest first; equal times keep insertion order, like a stable sort. $1 limit.
SELECT * FROM stent_dead_letters ORDER BY created_at DESC, ordinal LIMIT $1;

-- get_dead_letter --
-- $1 task_id.
SELECT * FROM stent_dead_letters WHERE task_id = $1;

-- discard_dead_letter --
-- $1 task_id.
DELETE FROM stent_dead_letters WHERE task_id = $1 RETURNING task_id;

-- lock_execution_for_replay --
-- The state of the execution of a dead-lettered task, its row locked (FOR NO KEY UPDATE, which
-- a cancellation's FOR UPDATE waits for, and the other way round): a cancelled or timed-out
-- execution is never revived. First statement of the replay: execution row, then task rows,
-- as cleanup_executions takes them. $1 task_id.
SELECT e.state
FROM stent_tasks AS t
JOIN stent_executions AS e ON e.id = t.execution_id
WHERE t.id = $1
FOR NO KEY UPDATE OF e;

-- take_dead_letter_for_replay --
-- Only a task that is still failed can be replayed; otherwise the entry stays. The task is
-- locked first (FOR NO KEY UPDATE), so its state cannot change before the reset below.
-- $1 task_id.
WITH failed AS (
    SELECT id FROM stent_tasks WHERE id = $1 AND state = 'failed' FOR NO KEY UPDATE
)
DELETE FROM stent_dead_letters AS d
USING failed
WHERE d.task_id = failed.id
RETURNING d.task_id;

-- reset_task_for_replay --
-- $1 task_id, $2 reset_retries, $3 set_queue, $4 queue, $5 now.
UPDATE stent_tasks
SET state = 'pending',
    attempt = attempt + 1,
    retries = CASE WHEN $2 THEN 0 ELSE retries END,
    queue = CASE WHEN $3 THEN $4 ELSE queue END,
    crash_count = 0,
    due_at = $5,
    error = NULL,
    finished_at = NULL,
    worker_id = NULL,
    lease_expires_at = NULL,
    fence = fence + 1
WHERE id = $1
RETURNING parent_id, execution_id;

-- revive_ancestor --
-- A caller that failed because of the replayed task resumes by replay at the same attempt.
-- $1 id.
UPDATE stent_tasks
SET state = 'waiting', error = NULL, finished_at = NULL, fence = fence + 1
WHERE id = $1 AND state = 'failed'
RETURNING parent_id;

-- revive_execution --
-- $1 execution_id, $2 progress ([running entry]). Returns its id when it was failed.
UPDATE stent_executions
SET state = 'running',
    error = NULL,
    finished_at = NULL,
    progress = CASE WHEN jsonb_array_length(progress) >= 100 THEN progress - 0
                    ELSE progress END || $2::jsonb
WHERE id = $1 AND state = 'failed'
RETURNING id;

-- revive_stopped_tasks --
-- The tasks that the failure of a revived execution cancelled (stent_finish_task) are put
-- back as they were: waiting, or pending (a running one's worker was fenced out). No worker
-- holds or waits for a cancelled row; the execution row is locked already (replay order).
-- $1 execution_id.
UPDATE stent_tasks
SET state = CASE WHEN cancelled_from = 'waiting' THEN 'waiting' ELSE 'pending' END,
    cancelled_from = NULL, finished_at = NULL, fence = fence + 1
WHERE execution_id = $1 AND state = 'cancelled' AND cancelled_from IS NOT NULL;

-- database_time --
-- The server's clock, for the engine's clock-offset correction (never for a decision).
SELECT clock_timestamp();
