-- Stent schema for PostgreSQL, version 1.
--
-- Applied by PostgresBackend.init_db() inside one transaction, under an advisory lock, in the
-- schema the backend's search_path names (tables are never schema-qualified here).
--
-- Times are timestamptz (UTC instants, microseconds), always passed in by the engine.
-- Payloads are bytea; tags are text[]; retry policies, progress, counters and custom state
-- are jsonb. "ordinal" (an identity column) is insertion order, the tie-breaker of every
-- ordering the backend contract defines. No foreign keys: every write is one statement
-- whose own WHERE clauses keep the rows consistent, and an FK check would add a lookup and
-- a share lock on the execution row to every step insert (the hot path).

CREATE TABLE stent_executions (
    ordinal         bigint      GENERATED ALWAYS AS IDENTITY,
    id              text        NOT NULL,
    function        text        NOT NULL,
    state           text        NOT NULL,
    root_task_id    text        NOT NULL,
    args            bytea       NOT NULL,
    result          bytea,
    error           bytea,
    queue           text,
    tags            text[]      NOT NULL DEFAULT '{}',
    priority        integer     NOT NULL DEFAULT 0,
    idempotency_key text,
    deadline        timestamptz,
    created_at      timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    -- the last 100 events, oldest first: [{"event": ..., "at": iso-8601, ...}, ...]
    progress        jsonb       NOT NULL DEFAULT '[]',
    counters        jsonb       NOT NULL DEFAULT '{}',
    custom_state    jsonb       NOT NULL DEFAULT '{}',
    CONSTRAINT stent_executions_pkey PRIMARY KEY (id),
    CONSTRAINT stent_executions_idempotency_key_key UNIQUE (idempotency_key),
    CONSTRAINT stent_executions_state_check CHECK (state IN (
        'pending', 'running', 'completed', 'failed', 'timed_out', 'cancelling', 'cancelled'))
);

-- list_executions: newest first, the later inserted first among equal times.
CREATE INDEX stent_executions_created ON stent_executions (created_at DESC, ordinal DESC);
-- count_executions(state), list_executions(state=...).
CREATE INDEX stent_executions_state ON stent_executions (state);
-- cleanup_executions: terminal executions finished before a cutoff.
CREATE INDEX stent_executions_finished ON stent_executions (finished_at)
    WHERE state IN ('completed', 'failed', 'timed_out', 'cancelled');

CREATE TABLE stent_tasks (
    ordinal          bigint           GENERATED ALWAYS AS IDENTITY,
    id               text             NOT NULL,
    execution_id     text             NOT NULL,
    parent_id        text,
    parent_attempt   integer          NOT NULL,
    seq              integer          NOT NULL,
    step_name        text             NOT NULL,
    kind             text             NOT NULL,
    state            text             NOT NULL,
    args             bytea            NOT NULL,
    arg_digest       text             NOT NULL,
    result           bytea,
    error            bytea,
    queue            text,
    tags             text[]           NOT NULL DEFAULT '{}',
    priority         integer          NOT NULL DEFAULT 0,
    due_at           timestamptz      NOT NULL,
    worker_id        text,
    lease_expires_at timestamptz,
    fence            integer          NOT NULL DEFAULT 0,
    attempt          integer          NOT NULL DEFAULT 1,
    retries          integer          NOT NULL DEFAULT 0,
    crash_count      integer          NOT NULL DEFAULT 0,
    retry_policy     jsonb            NOT NULL DEFAULT '{}',
    timeout_s        double precision,
    max_concurrent   integer,
    idempotency_key  text             NOT NULL DEFAULT '',
    created_at       timestamptz      NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    -- Whether this task holds one of its function's max_concurrent slots, i.e. is counted in
    -- stent_concurrency.holders. Meaningful only while state = 'running': a task leaving
    -- 'running' gives its slot back in the same statement (the flag is then stale, and every
    -- way back into 'running' sets it afresh).
    slot             boolean          NOT NULL DEFAULT false,
    CONSTRAINT stent_tasks_pkey PRIMARY KEY (id),
    -- The step key. Root tasks have a NULL parent_id, and NULLs never collide in a UNIQUE
    -- constraint. Also serves load_steps (parent_id, parent_attempt, ordered by seq).
    CONSTRAINT stent_tasks_step_key UNIQUE (parent_id, parent_attempt, seq),
    CONSTRAINT stent_tasks_state_check CHECK (state IN (
        'pending', 'running', 'waiting', 'completed', 'failed', 'cancelled'))
);

-- list_tasks_for_execution (oldest first) and cleanup_executions.
CREATE INDEX stent_tasks_execution ON stent_tasks (execution_id, ordinal);
-- claim: pending tasks without a concurrency cap, in claim order. Partial, so finished and
-- running rows cost nothing here.
CREATE INDEX stent_tasks_pending ON stent_tasks (priority DESC, due_at, ordinal)
    WHERE state = 'pending' AND max_concurrent IS NULL;
-- claim: running tasks whose lease expired (crash recovery), and lapsed slot holders.
CREATE INDEX stent_tasks_leased ON stent_tasks (lease_expires_at)
    WHERE state = 'running';
-- claim: claimable tasks of one capped function, in claim order (a capped function's
-- backlog never slows the claim of uncapped work, which uses stent_tasks_pending).
CREATE INDEX stent_tasks_capped ON stent_tasks (step_name, priority DESC, due_at, ordinal)
    WHERE state IN ('pending', 'running') AND max_concurrent IS NOT NULL;

CREATE TABLE stent_dead_letters (
    ordinal      bigint      GENERATED ALWAYS AS IDENTITY,
    task_id      text        NOT NULL,
    execution_id text        NOT NULL,
    step_name    text        NOT NULL,
    queue        text,
    reason       text        NOT NULL,
    error        bytea,
    created_at   timestamptz NOT NULL,
    retries      integer     NOT NULL,
    CONSTRAINT stent_dead_letters_pkey PRIMARY KEY (task_id)
);

-- list_dead_letters (newest first, insertion order among equal times), cleanup_dead_letters.
CREATE INDEX stent_dead_letters_created ON stent_dead_letters (created_at DESC, ordinal);
-- cleanup_executions deletes the dead letters of the executions it deletes.
CREATE INDEX stent_dead_letters_execution ON stent_dead_letters (execution_id);

-- max_concurrent: one row per capped function (created when its first capped task is
-- inserted). "holders" counts its tasks with slot = true and state = 'running'. Every
-- statement that gives or takes a slot updates this row in the same statement, so the count
-- is exact; a claim locks the row (FOR NO KEY UPDATE SKIP LOCKED) before taking slots, so two
-- claimers can never both take the last one.
CREATE TABLE stent_concurrency (
    step_name text    NOT NULL,
    holders   integer NOT NULL DEFAULT 0,
    CONSTRAINT stent_concurrency_pkey PRIMARY KEY (step_name)
);

-- The claim's eligibility rule (ClaimFilter.matches), one expression the planner inlines:
-- a function task needs a registered name; sleep timers ignore queues and tags; a worker
-- with tags takes untagged tasks and tasks sharing one of its tags.
CREATE FUNCTION stent_claimable(
    kind text, step_name text, queue text, tags text[],
    names text[], queues text[], default_queue boolean, worker_tags text[]
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (kind <> 'function' OR step_name = ANY (names))
   AND (kind = 'sleep' OR (
            (queues IS NULL OR queue = ANY (queues) OR (queue IS NULL AND default_queue))
        AND (worker_tags IS NULL OR cardinality(tags) = 0 OR tags && worker_tags)));

-- Finishing a task (complete_task, fail_task): one call, so one round trip, but several
-- statements, because in READ COMMITTED each statement of a VOLATILE function takes a fresh
-- snapshot. That is what makes the parent's wake-up impossible to lose: the task's row is
-- locked by the first UPDATE; a suspension of the parent that locked it FOR SHARE first
-- (suspend_task) has committed by then, and the next statement sees the parent 'waiting'.
-- (A single statement could not: its snapshot predates that commit, and a KEY SHARE lock
-- does not wait for an update that leaves the key alone, so it returns the old version.)
-- The counter row is the last lock taken (see queries/postgres.sql).
CREATE FUNCTION stent_finish_task(
    p_id text, p_fence integer, p_state text, p_result bytea, p_error bytea,
    p_now timestamptz, p_dead_letter_reason text, p_progress jsonb
) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    done record;
BEGIN
    UPDATE stent_tasks
    SET state = p_state,
        result = CASE WHEN p_state = 'completed' THEN p_result ELSE result END,
        error = p_error,
        finished_at = p_now,
        worker_id = NULL,
        lease_expires_at = NULL
    WHERE id = p_id AND fence = p_fence AND state = 'running'
    RETURNING id, parent_id, execution_id, step_name, queue, retries, slot INTO done;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF p_dead_letter_reason IS NOT NULL THEN
        -- A task dead-lettered again keeps its place (ordinal), as a dict key would.
        INSERT INTO stent_dead_letters AS d (
            task_id, execution_id, step_name, queue, reason, error, created_at, retries)
        VALUES (done.id, done.execution_id, done.step_name, done.queue, p_dead_letter_reason,
                p_error, p_now, done.retries)
        ON CONFLICT (task_id) DO UPDATE SET
            execution_id = excluded.execution_id,
            step_name = excluded.step_name,
            queue = excluded.queue,
            reason = excluded.reason,
            error = excluded.error,
            created_at = excluded.created_at,
            retries = excluded.retries;
    END IF;
    IF done.parent_id IS NOT NULL THEN
        UPDATE stent_tasks SET state = 'pending'
        WHERE id = done.parent_id AND state = 'waiting';
    ELSE
        UPDATE stent_executions
        SET state = p_state,
            result = p_result,
            error = CASE WHEN p_state = 'completed' THEN NULL ELSE p_error END,
            finished_at = p_now,
            progress = CASE WHEN jsonb_array_length(progress) >= 100 THEN progress - 0
                            ELSE progress END || p_progress
        WHERE id = done.execution_id
          AND state NOT IN ('completed', 'failed', 'timed_out', 'cancelled');
    END IF;
    IF done.slot THEN
        UPDATE stent_concurrency SET holders = holders - 1 WHERE step_name = done.step_name;
    END IF;
    RETURN true;
END;
$$;

-- update_task, the operator's override: write the fields, bump the fence (fencing out any
-- worker still holding the task), let the slot follow the new state (a task made running
-- under a lease holds one), and wake a suspended parent when the task is made claimable
-- again or finished by hand, in a statement of its own as stent_finish_task does. Returns
-- the new fence, or NULL when there is no such task.
CREATE FUNCTION stent_update_task(
    p_id text, p_state text, p_worker_id text, p_lease_expires_at timestamptz,
    p_due_at timestamptz, p_priority integer, p_queue text, p_tags text[],
    p_retries integer, p_crash_count integer
) RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    held boolean;
    done record;
BEGIN
    SELECT slot AND state = 'running' INTO held
    FROM stent_tasks WHERE id = p_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE stent_tasks
    SET state = p_state, worker_id = p_worker_id, lease_expires_at = p_lease_expires_at,
        due_at = p_due_at, priority = p_priority, queue = p_queue, tags = p_tags,
        retries = p_retries, crash_count = p_crash_count, fence = fence + 1,
        slot = p_state = 'running' AND p_lease_expires_at IS NOT NULL
               AND max_concurrent IS NOT NULL
    WHERE id = p_id
    RETURNING fence, parent_id, step_name, slot INTO done;
    IF done.parent_id IS NOT NULL
       AND p_state IN ('pending', 'completed', 'failed', 'cancelled') THEN
        UPDATE stent_tasks SET state = 'pending'
        WHERE id = done.parent_id AND state = 'waiting';
    END IF;
    IF done.slot <> held THEN
        UPDATE stent_concurrency
        SET holders = holders + CASE WHEN done.slot THEN 1 ELSE -1 END
        WHERE step_name = done.step_name;
    END IF;
    RETURN done.fence;
END;
$$;
