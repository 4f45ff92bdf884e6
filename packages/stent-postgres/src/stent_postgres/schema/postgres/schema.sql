-- The whole current Stent schema for PostgreSQL (version 5), in one file.
--
-- What every migration (NNNN_*.sql beside this file) applied in order to an empty schema
-- produces; tests/backends/test_postgres_schema.py checks that they agree, column by column
-- and index by index. Read it to see the schema; init_db() applies the migrations (and keeps
-- the stent_schema_version table, which is its own bookkeeping and is not listed here).
-- When a migration is added, update this file to match.
--
-- Times are timestamptz; payloads bytea; tags text[]; retry policies, progress, counters and
-- custom state jsonb. "ordinal" is insertion order, the tie-breaker of every ordering.

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
-- expire_executions: live executions with a deadline, most overdue first.
CREATE INDEX stent_executions_deadline ON stent_executions (deadline, ordinal)
    WHERE state IN ('pending', 'running') AND deadline IS NOT NULL;

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
    -- the W3C traceparent of the span that created the task (NULL without tracing)
    trace_context    text,
    -- The state ('pending', 'waiting' or 'running') of a task cancelled because its
    -- execution finished (its root completed or failed) while it was unfinished; NULL for
    -- every other task. A dead-letter replay that revives the execution puts it back.
    cancelled_from   text,
    -- Whether the worker running this task marked its current run alone (mark_alone): a
    -- take-over charges a task with crash_count > 0 only then (see 0005_alone.sql).
    alone            boolean          NOT NULL DEFAULT false,
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
-- a function task needs a registered name; built-in timers (sleeps, and signal waits due at
-- their timeout) ignore queues and tags; a worker with tags takes untagged tasks and tasks
-- sharing one of its tags.
CREATE FUNCTION stent_claimable(
    kind text, step_name text, queue text, tags text[],
    names text[], queues text[], default_queue boolean, worker_tags text[]
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (kind <> 'function' OR step_name = ANY (names))
   AND (kind IN ('sleep', 'signal') OR (
            (queues IS NULL OR queue = ANY (queues) OR (queue IS NULL AND default_queue))
        AND (worker_tags IS NULL OR cardinality(tags) = 0 OR tags && worker_tags)));

-- Finishing a task (complete_task, fail_task): one call, so one round trip, but several
-- statements, because in READ COMMITTED each statement of a VOLATILE function takes a fresh
-- snapshot. That is what makes the parent's wake-up impossible to lose: the task's row is
-- locked by the first UPDATE; a suspension of the parent that locked it FOR SHARE first
-- (suspend_task) has committed by then, and the next statement sees the parent 'waiting'.
-- (A single statement could not: its snapshot predates that commit, and a KEY SHARE lock
-- does not wait for an update that leaves the key alone, so it returns the old version.)
-- An execution that is not live is never completed or failed (a late result of a cancelled
-- or timed-out execution), and a cancelling one is settled (stent_settle_execution; its
-- "cancelled" progress entry is p_progress's with the event renamed, so it carries the same
-- time). A completed task's result is stored in the cache entries it owns (an indexed
-- update right after the task's, before any execution row is locked). A root task that
-- finishes its live execution first cancels the execution's other unfinished tasks,
-- remembering their states in cancelled_from (see 0004_finished_executions.sql). The counter
-- rows are the last locks taken (see queries/postgres.sql).
CREATE FUNCTION stent_finish_task(
    p_id text, p_fence integer, p_state text, p_result bytea, p_error bytea,
    p_now timestamptz, p_dead_letter_reason text, p_progress jsonb
) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    done record;
    v_released text[] := '{}';
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
    IF done.parent_id IS NULL
       AND EXISTS (SELECT 1 FROM stent_tasks
                   WHERE execution_id = done.execution_id
                     AND state IN ('pending', 'waiting', 'running'))
       AND stent_live_execution(done.execution_id) IS NOT NULL THEN
        -- The root finishes a live execution that has unfinished tasks: they are cancelled
        -- here, before the execution row is locked (see the header of this version).
        PERFORM stent_freeze_execution(done.execution_id);
        WITH stopped AS (
            UPDATE stent_tasks
            SET cancelled_from = state, state = 'cancelled', finished_at = p_now,
                worker_id = NULL, lease_expires_at = NULL
            WHERE execution_id = done.execution_id
              AND state IN ('pending', 'waiting', 'running')
            RETURNING step_name, slot AND cancelled_from = 'running' AS held
        )
        SELECT coalesce(array_agg(stopped.step_name) FILTER (WHERE stopped.held), '{}')
        INTO v_released
        FROM stopped;
    END IF;
    IF p_state = 'completed' THEN
        UPDATE stent_cache
        SET result = p_result, expires_at = p_now + ttl_s * interval '1 second'
        WHERE task_id = p_id AND result IS NULL;
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
        PERFORM stent_settle_execution(
            done.execution_id, p_now, jsonb_set(p_progress, '{0,event}', '"cancelled"'));
    ELSE
        UPDATE stent_executions
        SET state = p_state,
            result = p_result,
            error = CASE WHEN p_state = 'completed' THEN NULL ELSE p_error END,
            finished_at = p_now,
            progress = CASE WHEN jsonb_array_length(progress) >= 100 THEN progress - 0
                            ELSE progress END || p_progress
        WHERE id = done.execution_id AND state IN ('pending', 'running');
        IF NOT FOUND THEN
            PERFORM stent_settle_execution(
                done.execution_id, p_now, jsonb_set(p_progress, '{0,event}', '"cancelled"'));
        END IF;
    END IF;
    IF cardinality(v_released) > 0 THEN
        IF done.slot THEN
            v_released := v_released || done.step_name;
        END IF;
        PERFORM stent_shift_slots(v_released, '{}');
    ELSIF done.slot THEN
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

-- Cancellation and deadlines.
--
-- An execution is live while 'pending' or 'running'. cancel_execution makes a live one
-- 'cancelling' (its pending and waiting tasks 'cancelled'), and it is settled to 'cancelled'
-- by whichever transaction leaves it with no running task; expire_executions times out a
-- live one past its deadline, every unfinished task cancelled. A task of an execution that is
-- not live is never claimed, starts no step, is cancelled by a heartbeat, a retry, a release
-- or a suspension, and its completion never finishes the execution.
--
-- Why this is safe at READ COMMITTED without a lock on the execution row on the hot path:
--
-- * Every worker call on a task it holds (retry, release, suspend, renew, step insert) locks
--   the task's row first and reads the state of its execution only afterwards, in a later
--   statement or a VOLATILE function (stent_live_execution), so with a fresh snapshot.
-- * A cancellation or a time-out first locks every pending and running task of the
--   execution, and every waiting signal wait (stent_freeze_execution), and only then the
--   execution row (FOR UPDATE), and
--   changes things in later statements. So a worker call either took its task's row first,
--   and the cancellation waited for it and sees what it did, or waits for the cancellation
--   to commit and then sees the execution stopping. Locks keep the global order: task rows
--   (ancestors first), then execution rows, then stent_concurrency rows.
-- * Settling (stent_settle_execution): a transaction that leaves a task of a cancelling
--   execution not running locks the execution row FOR UPDATE, then checks in a NEW statement
--   that no task of it runs. Two siblings finishing at once serialize on that lock, and the
--   second one's check, taken after the first committed, sees both tasks finished; a plain
--   UPDATE ... WHERE NOT EXISTS would re-check only the execution row after waiting, with the
--   old snapshot's view of the sibling, and both could leave it 'cancelling' for ever.
--   The state is first read without a lock, so a live execution costs a finishing task one
--   index lookup and no lock: a cancellation that commits after that read had frozen the
--   task first, so it waited for this transaction and settles the execution itself.

-- The id of an execution if it is live ('pending' or 'running'; an unknown one counts as
-- live, as in the reference backend), else NULL. VOLATILE PL/pgSQL, so it reads the newest
-- committed state even when called from a statement whose snapshot is older: insert_step
-- calls it after locking the parent, and claim on the rows it locks (an update of such a
-- row makes the claim re-evaluate it, this call included). It returns the id rather than a
-- boolean because the planner takes "f(...) IS NOT NULL" for a filter that keeps nearly
-- every row, and a more selective-looking one would tempt a generic plan of the claim into
-- sorting every due task instead of reading its claim-ordered index under the LIMIT.
CREATE FUNCTION stent_live_execution(p_execution_id text) RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_state text;
BEGIN
    SELECT state INTO v_state FROM stent_executions WHERE id = p_execution_id;
    IF v_state IS NULL OR v_state IN ('pending', 'running') THEN
        RETURN p_execution_id;
    END IF;
    RETURN NULL;
END;
$$;

-- A cancelling execution becomes 'cancelled' once none of its tasks runs; called by every
-- transaction that takes a task of it out of 'running', after that change. A live or
-- finished execution is only read (no lock on the hot path). Returns the state afterwards.
CREATE FUNCTION stent_settle_execution(
    p_execution_id text, p_now timestamptz, p_progress jsonb
) RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_state text;
BEGIN
    SELECT state INTO v_state FROM stent_executions WHERE id = p_execution_id;
    IF v_state IS DISTINCT FROM 'cancelling' THEN
        RETURN v_state;
    END IF;
    -- Settlers of one execution take turns here; the check below is a new statement, so it
    -- sees every task change committed by the settlers before.
    SELECT state INTO v_state FROM stent_executions WHERE id = p_execution_id FOR UPDATE;
    IF v_state IS DISTINCT FROM 'cancelling' THEN
        RETURN v_state;
    END IF;
    UPDATE stent_executions
    SET state = 'cancelled',
        finished_at = p_now,
        progress = CASE WHEN jsonb_array_length(progress) >= 100 THEN progress - 0
                        ELSE progress END || p_progress
    WHERE id = p_execution_id
      AND NOT EXISTS (SELECT 1 FROM stent_tasks
                      WHERE execution_id = p_execution_id AND state = 'running');
    RETURN CASE WHEN FOUND THEN 'cancelled' ELSE 'cancelling' END;
END;
$$;

-- max_concurrent counters: one slot back per name in p_released, one taken per name in
-- p_taken; counter rows are locked in name order (as the claim locks them).
CREATE FUNCTION stent_shift_slots(p_released text[], p_taken text[]) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_change record;
BEGIN
    FOR v_change IN
        SELECT change.step_name, sum(change.n)::integer AS n
        FROM (SELECT name AS step_name, -1 AS n FROM unnest(p_released) AS r (name)
              UNION ALL
              SELECT name, 1 FROM unnest(p_taken) AS t (name)) AS change
        GROUP BY change.step_name
        HAVING sum(change.n) <> 0
        ORDER BY change.step_name
    LOOP
        UPDATE stent_concurrency SET holders = holders + v_change.n
        WHERE step_name = v_change.step_name;
    END LOOP;
END;
$$;

-- Cancel the running tasks among (p_ids[i], p_fences[i]) (fenced; with p_expired_before,
-- only those whose lease expired before it): lease dropped, suspended parents woken, their
-- executions settled. The slots they held are NOT given back here but returned in
-- o_released, for the caller to give back last (stent_shift_slots).
CREATE FUNCTION stent_cancel_running(
    p_ids text[], p_fences integer[], p_now timestamptz, p_progress jsonb,
    p_expired_before timestamptz, OUT o_count integer, OUT o_released text[]
)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_parents text[];
    v_executions text[];
    v_execution text;
BEGIN
    WITH held AS (
        SELECT t.id
        FROM stent_tasks AS t
        JOIN unnest(p_ids, p_fences) AS h (id, fence) ON t.id = h.id AND t.fence = h.fence
        WHERE t.state = 'running'
          AND (p_expired_before IS NULL OR t.lease_expires_at < p_expired_before)
        ORDER BY t.ordinal
        FOR NO KEY UPDATE OF t
    ),
    done AS (
        UPDATE stent_tasks AS t
        SET state = 'cancelled', finished_at = p_now, worker_id = NULL, lease_expires_at = NULL
        FROM held
        WHERE t.id = held.id
        RETURNING t.parent_id, t.execution_id, t.step_name, t.slot
    )
    SELECT count(*)::integer,
           coalesce(array_agg(done.step_name) FILTER (WHERE done.slot), '{}'),
           array_agg(done.parent_id) FILTER (WHERE done.parent_id IS NOT NULL),
           array_agg(DISTINCT done.execution_id)
    INTO o_count, o_released, v_parents, v_executions
    FROM done;
    IF o_count = 0 THEN
        RETURN;
    END IF;
    IF v_parents IS NOT NULL THEN
        UPDATE stent_tasks SET state = 'pending'
        WHERE id = ANY (v_parents) AND state = 'waiting';
    END IF;
    FOREACH v_execution IN ARRAY v_executions LOOP
        PERFORM stent_settle_execution(v_execution, p_now, p_progress);
    END LOOP;
END;
$$;

-- cancel_task: a held task stopped because its execution is being cancelled (fenced).
CREATE FUNCTION stent_cancel_task(
    p_id text, p_fence integer, p_now timestamptz, p_progress jsonb
) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_count integer;
    v_released text[];
BEGIN
    SELECT o_count, o_released INTO v_count, v_released
    FROM stent_cancel_running(ARRAY[p_id], ARRAY[p_fence], p_now, p_progress, NULL);
    PERFORM stent_shift_slots(v_released, '{}');
    RETURN v_count > 0;
END;
$$;

-- retry_task: the next attempt (fenced), or, in an execution that is not live, the task
-- cancelled instead. The task's row is locked before the execution's state is read (see
-- the header); the progress entry "retrying" is built here from p_at (ISO text).
CREATE FUNCTION stent_retry_task(
    p_id text, p_fence integer, p_error bytea, p_due_at timestamptz, p_now timestamptz,
    p_at text, p_progress jsonb
) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_execution text;
    done record;
BEGIN
    SELECT execution_id INTO v_execution FROM stent_tasks
    WHERE id = p_id AND fence = p_fence AND state = 'running'
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF stent_live_execution(v_execution) IS NULL THEN
        RETURN stent_cancel_task(p_id, p_fence, p_now, p_progress);
    END IF;
    UPDATE stent_tasks
    SET state = 'pending', error = p_error, due_at = p_due_at, attempt = attempt + 1,
        retries = retries + 1, worker_id = NULL, lease_expires_at = NULL
    WHERE id = p_id
    RETURNING id, execution_id, step_name, attempt, slot INTO done;
    UPDATE stent_executions
    SET progress = CASE WHEN jsonb_array_length(progress) >= 100 THEN progress - 0
                        ELSE progress END
                   || jsonb_build_array(jsonb_build_object(
                          'event', 'retrying', 'at', p_at, 'task_id', done.id,
                          'step', done.step_name, 'attempt', done.attempt))
    WHERE id = done.execution_id;
    IF done.slot THEN
        UPDATE stent_concurrency SET holders = holders - 1 WHERE step_name = done.step_name;
    END IF;
    RETURN true;
END;
$$;

-- release_task: the task given back (pending, same attempt; fenced), or cancelled in an
-- execution that is not live.
CREATE FUNCTION stent_release_task(
    p_id text, p_fence integer, p_now timestamptz, p_progress jsonb
) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_execution text;
    done record;
BEGIN
    SELECT execution_id INTO v_execution FROM stent_tasks
    WHERE id = p_id AND fence = p_fence AND state = 'running'
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF stent_live_execution(v_execution) IS NULL THEN
        RETURN stent_cancel_task(p_id, p_fence, p_now, p_progress);
    END IF;
    UPDATE stent_tasks
    SET state = 'pending', worker_id = NULL, lease_expires_at = NULL
    WHERE id = p_id
    RETURNING step_name, slot INTO done;
    IF done.slot THEN
        UPDATE stent_concurrency SET holders = holders - 1 WHERE step_name = done.step_name;
    END IF;
    RETURN true;
END;
$$;

-- suspend_task: drop the lease of a task waiting on p_awaited (fenced): 'waiting', or
-- 'pending' at once if one of them has already finished; cancelled in an execution that is
-- not live. No lost wake-up: the task is locked first, then the awaited children FOR SHARE,
-- which waits for any completion in flight (it holds the child's row) and returns the
-- children's newest versions. A child that finishes later must wait for this transaction to
-- commit before it can lock its own row; the parent's wake-up, a later statement of
-- stent_finish_task, then sees this task 'waiting'.
CREATE FUNCTION stent_suspend_task(
    p_id text, p_fence integer, p_awaited text[], p_now timestamptz, p_at text,
    p_progress jsonb
) RETURNS boolean
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_execution text;
    v_done boolean;
    done record;
BEGIN
    SELECT execution_id INTO v_execution FROM stent_tasks
    WHERE id = p_id AND fence = p_fence AND state = 'running'
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF stent_live_execution(v_execution) IS NULL THEN
        RETURN stent_cancel_task(p_id, p_fence, p_now, p_progress);
    END IF;
    SELECT coalesce(bool_or(awaited.state IN ('completed', 'failed', 'cancelled')), false)
    INTO v_done
    FROM (SELECT child.state
          FROM stent_tasks AS child
          WHERE child.id = ANY (p_awaited)
          ORDER BY child.ordinal
          FOR SHARE) AS awaited;
    UPDATE stent_tasks
    SET state = CASE WHEN v_done THEN 'pending' ELSE 'waiting' END,
        worker_id = NULL,
        lease_expires_at = NULL
    WHERE id = p_id
    RETURNING id, execution_id, step_name, slot INTO done;
    IF NOT v_done THEN
        UPDATE stent_executions
        SET progress = CASE WHEN jsonb_array_length(progress) >= 100 THEN progress - 0
                            ELSE progress END
                       || jsonb_build_array(jsonb_build_object(
                              'event', 'waiting', 'at', p_at, 'task_id', done.id,
                              'step', done.step_name))
        WHERE id = done.execution_id;
    END IF;
    IF done.slot THEN
        UPDATE stent_concurrency SET holders = holders - 1 WHERE step_name = done.step_name;
    END IF;
    RETURN true;
END;
$$;

-- renew_leases: extend the leases of (p_ids[i], p_fences[i]) held by p_worker_id until
-- p_lease_until; returns the ids renewed. Rows are locked in ordinal order (ancestors first,
-- as everywhere). Tasks of executions that are not live are cancelled instead (the
-- heartbeat is how a remote worker learns of a cancellation) and so reported lost. A capped
-- task whose slot lapsed while its lease had expired takes a slot again: it is live once
-- more, and counts (the cap may be exceeded by it, as in the reference backend).
CREATE FUNCTION stent_renew_leases(
    p_worker_id text, p_ids text[], p_fences integer[], p_lease_until timestamptz,
    p_progress jsonb
) RETURNS SETOF text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_held text[];
    v_stopped text[];
    v_stopped_fences integer[];
    v_released text[] := '{}';
    v_taken text[];
    v_count integer;
BEGIN
    SELECT array_agg(held.id) INTO v_held
    FROM (SELECT t.id
          FROM stent_tasks AS t
          JOIN unnest(p_ids, p_fences) AS h (id, fence) ON t.id = h.id AND t.fence = h.fence
          WHERE t.state = 'running' AND t.worker_id = p_worker_id
          ORDER BY t.ordinal
          FOR NO KEY UPDATE OF t) AS held;
    IF v_held IS NULL THEN
        RETURN;
    END IF;
    SELECT array_agg(t.id ORDER BY t.ordinal), array_agg(t.fence ORDER BY t.ordinal)
    INTO v_stopped, v_stopped_fences
    FROM stent_tasks AS t
    JOIN stent_executions AS e ON e.id = t.execution_id
    WHERE t.id = ANY (v_held) AND e.state NOT IN ('pending', 'running');
    IF v_stopped IS NOT NULL THEN
        SELECT o_count, o_released INTO v_count, v_released
        FROM stent_cancel_running(v_stopped, v_stopped_fences, p_lease_until, p_progress,
                                  NULL);
    END IF;
    WITH previous AS (
        SELECT t.id, t.slot
        FROM stent_tasks AS t
        WHERE t.id = ANY (v_held) AND t.state = 'running'
    ),
    renewed AS (
        UPDATE stent_tasks AS t
        SET lease_expires_at = p_lease_until,
            slot = t.max_concurrent IS NOT NULL
        FROM previous
        WHERE t.id = previous.id
        RETURNING t.id, t.step_name, t.slot AND NOT previous.slot AS regained
    )
    SELECT array_agg(renewed.id),
           coalesce(array_agg(renewed.step_name) FILTER (WHERE renewed.regained), '{}')
    INTO v_held, v_taken
    FROM renewed;
    PERFORM stent_shift_slots(v_released, v_taken);
    IF v_held IS NOT NULL THEN
        RETURN QUERY SELECT unnest(v_held);
    END IF;
END;
$$;

-- Lock every pending and running task of an execution, and every waiting signal wait,
-- ancestors first, and go on until a fresh look finds none left unlocked (a step inserted or
-- a parent woken while the locks were being taken). From then on no worker call on a task of
-- it can change anything until this transaction ends, no signal is delivered to it, and no
-- new task can appear under it (a step insert locks its parent FOR SHARE), so its caller's
-- later statements see a settled set. Other waiting tasks are not locked: only the
-- completion of a running child changes them, and it holds the child; a signal wait is
-- completed by send_signal, which holds nothing of the execution but the wait itself.
CREATE FUNCTION stent_freeze_execution(p_execution_id text) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_locked text[] := '{}';
    v_more text[];
    v_round integer := 0;
BEGIN
    LOOP
        SELECT array_agg(unfinished.id) INTO v_more
        FROM (SELECT id
              FROM stent_tasks
              WHERE execution_id = p_execution_id
                AND (state IN ('pending', 'running') OR (state = 'waiting' AND kind = 'signal'))
                AND id <> ALL (v_locked)
              ORDER BY ordinal
              FOR NO KEY UPDATE) AS unfinished;
        v_locked := v_locked || coalesce(v_more, '{}');
        v_round := v_round + 1;
        EXIT WHEN v_round >= 20 OR NOT EXISTS (
            SELECT 1 FROM stent_tasks
            WHERE execution_id = p_execution_id
              AND (state IN ('pending', 'running') OR (state = 'waiting' AND kind = 'signal'))
              AND id <> ALL (v_locked));
    END LOOP;
END;
$$;

-- cancel_execution: a live execution becomes 'cancelling' with p_error, its pending and
-- waiting tasks 'cancelled', and it is settled at once when none of its tasks runs. Its
-- running tasks are rewritten unchanged, so that a claim whose snapshot predates this
-- commit re-evaluates them (stent_live_execution) instead of taking one whose lease expired.
-- Returns the state afterwards (NULL: no such execution); a finished one is left alone.
CREATE FUNCTION stent_cancel_execution(
    p_id text, p_error bytea, p_now timestamptz, p_cancelling jsonb, p_cancelled jsonb
) RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_state text;
BEGIN
    SELECT state INTO v_state FROM stent_executions WHERE id = p_id;
    IF v_state IS NULL OR v_state NOT IN ('pending', 'running') THEN
        RETURN v_state;
    END IF;
    PERFORM stent_freeze_execution(p_id);
    SELECT state INTO v_state FROM stent_executions WHERE id = p_id FOR UPDATE;
    IF v_state IS NULL OR v_state NOT IN ('pending', 'running') THEN
        RETURN v_state;
    END IF;
    UPDATE stent_tasks
    SET state = 'cancelled', finished_at = p_now, worker_id = NULL, lease_expires_at = NULL
    WHERE execution_id = p_id AND state IN ('pending', 'waiting');
    UPDATE stent_tasks SET lease_expires_at = lease_expires_at
    WHERE execution_id = p_id AND state = 'running';
    UPDATE stent_executions
    SET state = 'cancelling',
        error = p_error,
        progress = CASE WHEN jsonb_array_length(progress) >= 100 THEN progress - 0
                        ELSE progress END || p_cancelling
    WHERE id = p_id;
    RETURN stent_settle_execution(p_id, p_now, p_cancelled);
END;
$$;

-- expire_executions: time out up to p_limit live executions whose deadline passed before
-- p_now (most overdue first), every unfinished task cancelled, running ones too; then
-- cancel the running tasks of cancelling or finished executions whose lease expired (their
-- workers died: nobody else would stop them), settling their executions. Returns the ids
-- timed out. Every slot is given back last, in one pass.
CREATE FUNCTION stent_expire_executions(
    p_error bytea, p_now timestamptz, p_limit integer, p_timed_out jsonb,
    p_cancelled jsonb
) RETURNS SETOF text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_candidates text[];
    v_id text;
    v_state text;
    v_deadline timestamptz;
    v_released text[] := '{}';
    v_more text[];
    v_orphans text[];
    v_orphan_fences integer[];
BEGIN
    SELECT array_agg(due.id ORDER BY due.deadline, due.ordinal) INTO v_candidates
    FROM (SELECT id, deadline, ordinal
          FROM stent_executions
          WHERE state IN ('pending', 'running') AND deadline IS NOT NULL
            AND deadline < p_now
          ORDER BY deadline, ordinal
          LIMIT greatest(p_limit, 0)) AS due;
    FOREACH v_id IN ARRAY coalesce(v_candidates, '{}') LOOP
        PERFORM stent_freeze_execution(v_id);
        SELECT state, deadline INTO v_state, v_deadline
        FROM stent_executions WHERE id = v_id FOR UPDATE;
        CONTINUE WHEN v_state IS NULL OR v_state NOT IN ('pending', 'running')
                      OR v_deadline IS NULL OR v_deadline >= p_now;
        WITH done AS (
            UPDATE stent_tasks
            SET state = 'cancelled', finished_at = p_now, worker_id = NULL,
                lease_expires_at = NULL
            WHERE execution_id = v_id AND state = 'running'
            RETURNING step_name, slot
        )
        SELECT array_agg(done.step_name) FILTER (WHERE done.slot) INTO v_more FROM done;
        v_released := v_released || coalesce(v_more, '{}');
        UPDATE stent_tasks
        SET state = 'cancelled', finished_at = p_now, worker_id = NULL,
            lease_expires_at = NULL
        WHERE execution_id = v_id AND state IN ('pending', 'waiting');
        UPDATE stent_executions
        SET state = 'timed_out',
            error = p_error,
            finished_at = p_now,
            progress = CASE WHEN jsonb_array_length(progress) >= 100 THEN progress - 0
                            ELSE progress END || p_timed_out
        WHERE id = v_id;
        RETURN NEXT v_id;
    END LOOP;
    SELECT array_agg(t.id ORDER BY t.ordinal), array_agg(t.fence ORDER BY t.ordinal)
    INTO v_orphans, v_orphan_fences
    FROM stent_tasks AS t
    JOIN stent_executions AS e ON e.id = t.execution_id
    WHERE t.state = 'running' AND t.lease_expires_at < p_now
      AND e.state NOT IN ('pending', 'running');
    IF v_orphans IS NOT NULL THEN
        SELECT o_released INTO v_more
        FROM stent_cancel_running(v_orphans, v_orphan_fences, p_now, p_cancelled, p_now);
        v_released := v_released || v_more;
    END IF;
    PERFORM stent_shift_slots(v_released, '{}');
END;
$$;

-- Step batches, signals, execution effects, idempotency/cache keys, maintenance leases.
--
-- Locks keep the global order of queries/postgres.sql (task rows from ancestors to
-- descendants, then execution rows, then stent_concurrency rows), with two additions:
--
-- * Signals. create_signal_wait and send_signal of one execution take turns on a
--   transaction-scoped advisory lock keyed on the execution id (class 0x5E48), taken as their
--   first lock. The waiter's check for a buffered signal and its insert, and the sender's
--   look for a waiter and its append, are later statements (fresh snapshots) under that lock,
--   so each sees everything the other committed before it: a signal arriving between a
--   waiter's check and its insert is never lost, and none is consumed twice. No other
--   transaction takes the advisory lock, and both take it while holding nothing, so it can
--   never close a cycle of waits. (The execution row would serialise them as well, but a
--   sender holding it would then wait for the waiter's task row, which a cancellation locks
--   before it waits for the execution row: a deadlock.)
--   A sender locks the waiter it serves, then wakes the waiter's parent, as a finishing
--   child does (child, then parent). A finishing child is running, so a cancellation locks
--   it (stent_freeze_execution) before anything that waits; a waiting signal wait was not
--   locked there, and a cancellation could lock the waiting parent and then wait for the
--   wait while a sender holds the wait and waits for the parent. So stent_freeze_execution
--   (below) now locks waiting signal waits too.
-- * Cache entries (stent_cache) are locked after the task rows of the transaction and
--   before execution rows: complete_task stores the result in its entry right after it
--   updates the task; cache_claim locks the entry, reads the owner's task without a lock and
--   touches only the caller's execution (a hit's progress entry).

-- Signals sent to an execution, one queue per (execution, name) in ordinal order. A signal
-- is consumed by exactly one signal wait (consumed_by: its task id), at once by the oldest
-- live waiter when there is one, else by the next wait created for that name. Consumed
-- signals stay (an audit trail) until their execution is deleted.
CREATE TABLE stent_signals (
    ordinal      bigint      GENERATED ALWAYS AS IDENTITY,
    execution_id text        NOT NULL,
    name         text        NOT NULL,
    payload      bytea       NOT NULL,
    created_at   timestamptz NOT NULL,
    consumed_by  text,
    consumed_at  timestamptz,
    CONSTRAINT stent_signals_pkey PRIMARY KEY (ordinal)
);

-- create_signal_wait: the oldest unconsumed signal of a name (only those are indexed).
CREATE INDEX stent_signals_unconsumed ON stent_signals (execution_id, name, ordinal)
    WHERE consumed_by IS NULL;
-- cleanup_executions deletes the signals of the executions it deletes.
CREATE INDEX stent_signals_execution ON stent_signals (execution_id);

-- Signal waits that may still be served: a row per wait created without a buffered signal,
-- deleted when a signal is delivered to it, or by the next send_signal of its name once its
-- task has finished otherwise (timed out, cancelled).
CREATE TABLE stent_signal_waiters (
    ordinal      bigint GENERATED ALWAYS AS IDENTITY,
    task_id      text   NOT NULL,
    execution_id text   NOT NULL,
    name         text   NOT NULL,
    CONSTRAINT stent_signal_waiters_pkey PRIMARY KEY (task_id)
);

-- send_signal: the waiters of a name in creation order; cleanup_executions by execution.
CREATE INDEX stent_signal_waiters_name ON stent_signal_waiters (execution_id, name, ordinal);

-- Idempotency/cache keys. task_id owns the key; result is NULL until the owner completes
-- (complete_task stores it, with expires_at = completion + ttl_s; NULL: never expires).
CREATE TABLE stent_cache (
    key        text             NOT NULL,
    task_id    text             NOT NULL,
    arg_digest text             NOT NULL,
    result     bytea,
    ttl_s      double precision,
    expires_at timestamptz,
    created_at timestamptz      NOT NULL,
    CONSTRAINT stent_cache_pkey PRIMARY KEY (key)
);

-- complete_task: the entries its task owns without a result yet (one probe of a small
-- index per completion); cleanup_executions: those of the tasks it deletes.
CREATE INDEX stent_cache_owner ON stent_cache (task_id) WHERE result IS NULL;
-- cleanup_cache: results that expired, oldest first.
CREATE INDEX stent_cache_expires ON stent_cache (expires_at) WHERE expires_at IS NOT NULL;

-- Maintenance leases (acquire_maintenance): one row per job name.
CREATE TABLE stent_maintenance (
    name        text        NOT NULL,
    holder      text        NOT NULL,
    lease_until timestamptz NOT NULL,
    CONSTRAINT stent_maintenance_pkey PRIMARY KEY (name)
);

-- create_steps: many children of one parent in one transaction, fenced on the parent once
-- (FOR SHARE, as insert_step: a claim that would take the parent over waits for this), each
-- key inserted unless taken. Children are inserted in input order (ordinal); a child born
-- failed with a reason gets its dead letter, one born pending with retries > 0 is logged as
-- a retry, a capped function gets its counter row (last lock). The rows come back in input
-- order, each with whether it was created; the final read is a statement of its own, so it
-- also sees a key that a concurrent insert took (ON CONFLICT waited for it). Nothing comes
-- back when the parent is not held at p_parent_fence or its execution is not live.
-- p_tags is a JSON array of the children's tag arrays, p_retry_policies one of their
-- policies (text[] cannot be ragged).
CREATE FUNCTION stent_create_steps(
    p_parent_id text, p_parent_fence integer, p_now timestamptz, p_at text,
    p_ids text[], p_parent_attempts integer[], p_seqs integer[], p_step_names text[],
    p_kinds text[], p_states text[], p_args bytea[], p_arg_digests text[],
    p_results bytea[], p_errors bytea[], p_queues text[], p_tags jsonb,
    p_priorities integer[], p_due_ats timestamptz[], p_retry_policies jsonb,
    p_timeouts double precision[], p_max_concurrents integer[],
    p_idempotency_keys text[], p_attempts integer[], p_retries integer[],
    p_dead_letter_reasons text[], p_trace_contexts text[]
) RETURNS TABLE (o_n integer, o_created boolean, o_task stent_tasks)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_execution text;
    v_inserted text[];
    v_retry record;
BEGIN
    SELECT execution_id INTO v_execution FROM stent_tasks
    WHERE id = p_parent_id AND fence = p_parent_fence AND state = 'running'
    FOR SHARE;
    IF NOT FOUND OR stent_live_execution(v_execution) IS NULL THEN
        RETURN;
    END IF;
    WITH inserted AS (
        INSERT INTO stent_tasks (
            id, execution_id, parent_id, parent_attempt, seq, step_name, kind, state, args,
            arg_digest, result, queue, tags, priority, due_at, retry_policy, timeout_s,
            max_concurrent, idempotency_key, created_at, finished_at, started_at, error,
            attempt, retries, trace_context)
        SELECT step.id, v_execution, p_parent_id, step.parent_attempt, step.seq,
               step.step_name, step.kind, step.state, step.args, step.arg_digest,
               step.result, step.queue,
               ARRAY(SELECT jsonb_array_elements_text(p_tags -> (step.i - 1)::integer)),
               step.priority, step.due_at, p_retry_policies -> (step.i - 1)::integer,
               step.timeout_s, step.max_concurrent, step.idempotency_key, p_now,
               -- a step born finished ran before it was written: it started as it finished
               CASE WHEN step.state IN ('completed', 'failed', 'cancelled') THEN p_now END,
               CASE WHEN step.state IN ('completed', 'failed', 'cancelled') THEN p_now END,
               step.error, step.attempt, step.retries, step.trace_context
        FROM unnest(p_ids, p_parent_attempts, p_seqs, p_step_names, p_kinds, p_states, p_args,
                    p_arg_digests, p_results, p_errors, p_queues, p_priorities, p_due_ats,
                    p_timeouts, p_max_concurrents, p_idempotency_keys, p_attempts, p_retries,
                    p_trace_contexts)
             WITH ORDINALITY AS step (
                 id, parent_attempt, seq, step_name, kind, state, args, arg_digest, result,
                 error, queue, priority, due_at, timeout_s, max_concurrent, idempotency_key,
                 attempt, retries, trace_context, i)
        ORDER BY step.i
        ON CONFLICT (parent_id, parent_attempt, seq) DO NOTHING
        RETURNING id
    )
    SELECT coalesce(array_agg(inserted.id), '{}') INTO v_inserted FROM inserted;
    IF EXISTS (SELECT 1 FROM unnest(p_dead_letter_reasons) AS r (reason)
               WHERE r.reason IS NOT NULL) THEN
        INSERT INTO stent_dead_letters AS d (
            task_id, execution_id, step_name, queue, reason, error, created_at, retries)
        SELECT t.id, t.execution_id, t.step_name, t.queue, r.reason, t.error, p_now, t.retries
        FROM unnest(p_ids, p_dead_letter_reasons) AS r (id, reason)
        JOIN stent_tasks AS t ON t.id = r.id
        WHERE r.id = ANY (v_inserted) AND r.reason IS NOT NULL AND t.state = 'failed'
        ORDER BY t.ordinal
        ON CONFLICT (task_id) DO UPDATE SET
            execution_id = excluded.execution_id,
            step_name = excluded.step_name,
            queue = excluded.queue,
            reason = excluded.reason,
            error = excluded.error,
            created_at = excluded.created_at,
            retries = excluded.retries;
    END IF;
    FOR v_retry IN
        SELECT t.id, t.step_name, t.attempt
        FROM stent_tasks AS t
        WHERE t.id = ANY (v_inserted) AND t.state = 'pending' AND t.retries > 0
        ORDER BY t.ordinal
    LOOP
        UPDATE stent_executions
        SET progress = CASE WHEN jsonb_array_length(progress) >= 100 THEN progress - 0
                            ELSE progress END
                       || jsonb_build_array(jsonb_build_object(
                              'event', 'retrying', 'at', p_at, 'task_id', v_retry.id,
                              'step', v_retry.step_name, 'attempt', v_retry.attempt))
        WHERE id = v_execution;
    END LOOP;
    IF EXISTS (SELECT 1 FROM unnest(p_max_concurrents) AS c (cap) WHERE c.cap IS NOT NULL) THEN
        INSERT INTO stent_concurrency (step_name)
        SELECT DISTINCT c.step_name
        FROM unnest(p_step_names, p_max_concurrents) AS c (step_name, cap)
        WHERE c.cap IS NOT NULL
        ORDER BY c.step_name
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN QUERY
    SELECT step.i::integer, step.id = ANY (v_inserted), t
    FROM unnest(p_ids, p_parent_attempts, p_seqs) WITH ORDINALITY AS step (id, parent_attempt,
                                                                          seq, i)
    JOIN stent_tasks AS t
        ON t.parent_id = p_parent_id AND t.parent_attempt = step.parent_attempt
       AND t.seq = step.seq
    ORDER BY step.i;
END;
$$;

-- create_signal_wait: a signal step at its key unless taken (fenced on the parent, which is
-- locked FOR SHARE as by insert_step), under the execution's signal lock (see the header).
-- When created and a signal of p_signal_name is still unconsumed, the oldest one is consumed
-- by it: the task is born completed with its payload. Otherwise it is born as given
-- (waiting, or pending due at its timeout) and becomes a waiter of the name. Returns the new
-- row (created) or the row at the key; nothing when the parent is not held at p_parent_fence
-- or its execution is not live.
CREATE FUNCTION stent_create_signal_wait(
    p_parent_id text, p_parent_fence integer, p_id text, p_parent_attempt integer,
    p_seq integer, p_step_name text, p_kind text, p_state text, p_args bytea,
    p_arg_digest text, p_result bytea, p_error bytea, p_queue text, p_tags text[],
    p_priority integer, p_due_at timestamptz, p_retry_policy jsonb, p_timeout_s double precision,
    p_max_concurrent integer, p_idempotency_key text, p_attempt integer, p_retries integer,
    p_trace_context text, p_signal_name text, p_now timestamptz
) RETURNS TABLE (o_created boolean, o_task stent_tasks)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_execution text;
    v_signal bigint;
    v_state text := p_state;
    v_result bytea := p_result;
    v_error bytea := p_error;
    v_id text;
BEGIN
    SELECT execution_id INTO v_execution FROM stent_tasks WHERE id = p_parent_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(x'5E48'::integer, hashtext(v_execution));
    PERFORM 1 FROM stent_tasks
    WHERE id = p_parent_id AND fence = p_parent_fence AND state = 'running'
    FOR SHARE;
    IF NOT FOUND OR stent_live_execution(v_execution) IS NULL THEN
        RETURN;
    END IF;
    SELECT s.ordinal, s.payload INTO v_signal, v_result
    FROM stent_signals AS s
    WHERE s.execution_id = v_execution AND s.name = p_signal_name AND s.consumed_by IS NULL
    ORDER BY s.ordinal
    LIMIT 1;
    IF v_signal IS NOT NULL THEN
        v_state := 'completed';
        v_error := NULL;
    ELSE
        v_result := p_result;
    END IF;
    INSERT INTO stent_tasks (
        id, execution_id, parent_id, parent_attempt, seq, step_name, kind, state, args,
        arg_digest, result, queue, tags, priority, due_at, retry_policy, timeout_s,
        max_concurrent, idempotency_key, created_at, finished_at, started_at, error, attempt,
        retries, trace_context)
    VALUES (
        p_id, v_execution, p_parent_id, p_parent_attempt, p_seq, p_step_name, p_kind, v_state,
        p_args, p_arg_digest, v_result, p_queue, p_tags, p_priority, p_due_at, p_retry_policy,
        p_timeout_s, p_max_concurrent, p_idempotency_key, p_now,
        CASE WHEN v_state IN ('completed', 'failed', 'cancelled') THEN p_now END,
        CASE WHEN v_state IN ('completed', 'failed', 'cancelled') THEN p_now END,
        v_error, p_attempt, p_retries, p_trace_context)
    ON CONFLICT (parent_id, parent_attempt, seq) DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        -- A replay (or a racing insert, which ON CONFLICT waited for): the row at the key,
        -- and nothing consumed.
        RETURN QUERY
        SELECT false, t FROM stent_tasks AS t
        WHERE t.parent_id = p_parent_id AND t.parent_attempt = p_parent_attempt
          AND t.seq = p_seq;
        RETURN;
    END IF;
    IF v_signal IS NOT NULL THEN
        UPDATE stent_signals SET consumed_by = v_id, consumed_at = p_now
        WHERE ordinal = v_signal;
    ELSIF v_state IN ('pending', 'waiting') THEN
        INSERT INTO stent_signal_waiters (task_id, execution_id, name)
        VALUES (v_id, v_execution, p_signal_name);
    END IF;
    RETURN QUERY SELECT true, t FROM stent_tasks AS t WHERE t.id = v_id;
END;
$$;

-- send_signal: under the execution's signal lock (see the header), the oldest waiter of
-- p_name whose task is still pending or waiting consumes the signal: completed with the
-- payload, its parent woken as stent_finish_task wakes it. Returns its id; '' when the signal
-- is kept for the next wait instead; NULL, writing nothing, when there is no such execution.
-- A waiter left behind by its parent (which has finished, or moved on to a later attempt
-- whose replay never reads it) is passed over, but kept: a dead-letter replay may revive a
-- failed parent at the same attempt.
--
-- * The root task is locked FOR KEY SHARE (which only a delete waits for) before anything is
--   written: cleanup_executions locks an execution's tasks, root first, before it deletes
--   them, and deletes its signals and waiters in later statements, so a sender either
--   finishes before those statements look (and its rows go with the execution) or finds the
--   execution gone.
-- * The waiter is served by an update that re-reads its state on the newest version of its
--   row (a claim of a waiter due at its timeout, SKIP LOCKED, either took it first, and it
--   is passed over: 'running', the signal goes to the next one or is kept; or finds it
--   completed). Locks: the waiter, then its parent only if that is 'waiting' (as a
--   finishing child wakes it); a suspension of the parent locks the parent and then the
--   awaited waiter FOR SHARE, so it waits for this delivery and sees it, and a cancellation
--   freezes the waiter before it locks anything that is waiting (stent_freeze_execution).
--   The parent is read without a lock: one retried or finished concurrently is ordered
--   after this delivery. Waiters whose task finished otherwise are dropped, except those
--   cancelled by their execution's finish (a dead-letter replay may revive them).
-- * The waiter is never a root task, and its execution is live (a cancellation cancels every
--   pending and waiting task in the transaction that stops the execution, after freezing
--   the waiter): no execution row is locked here.
CREATE FUNCTION stent_send_signal(
    p_execution_id text, p_name text, p_payload bytea, p_now timestamptz
) RETURNS text
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_root text;
    v_skipped text[] := '{}';
    v_waiter text;
    done record;
BEGIN
    PERFORM pg_advisory_xact_lock(x'5E48'::integer, hashtext(p_execution_id));
    SELECT root_task_id INTO v_root FROM stent_executions WHERE id = p_execution_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM 1 FROM stent_tasks WHERE id = v_root FOR KEY SHARE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    DELETE FROM stent_signal_waiters AS w
    USING stent_tasks AS t
    WHERE w.execution_id = p_execution_id AND w.name = p_name AND t.id = w.task_id
      AND (t.state IN ('completed', 'failed')
           OR (t.state = 'cancelled' AND t.cancelled_from IS NULL));
    LOOP
        SELECT w.task_id INTO v_waiter
        FROM stent_signal_waiters AS w
        JOIN stent_tasks AS t ON t.id = w.task_id
        JOIN stent_tasks AS p ON p.id = t.parent_id
        WHERE w.execution_id = p_execution_id AND w.name = p_name
          AND t.state IN ('pending', 'waiting') AND w.task_id <> ALL (v_skipped)
          AND p.attempt = t.parent_attempt
          AND p.state NOT IN ('completed', 'failed', 'cancelled')
        ORDER BY w.ordinal
        LIMIT 1;
        EXIT WHEN NOT FOUND;
        UPDATE stent_tasks AS t
        SET state = 'completed',
            result = p_payload,
            error = NULL,
            finished_at = p_now,
            started_at = coalesce(t.started_at, p_now),
            worker_id = NULL,
            lease_expires_at = NULL
        FROM stent_tasks AS p
        WHERE t.id = v_waiter AND t.state IN ('pending', 'waiting')
          AND p.id = t.parent_id AND p.attempt = t.parent_attempt
          AND p.state NOT IN ('completed', 'failed', 'cancelled')
        RETURNING t.id, t.parent_id INTO done;
        IF FOUND THEN
            DELETE FROM stent_signal_waiters WHERE task_id = done.id;
            INSERT INTO stent_signals (
                execution_id, name, payload, created_at, consumed_by, consumed_at)
            VALUES (p_execution_id, p_name, p_payload, p_now, done.id, p_now);
            UPDATE stent_tasks SET state = 'pending'
            WHERE id = done.parent_id AND state = 'waiting';
            RETURN done.id;
        END IF;
        -- claimed (its timeout is due), or its parent moved on, since it was read: the next
        v_skipped := v_skipped || v_waiter;
    END LOOP;
    INSERT INTO stent_signals (execution_id, name, payload, created_at)
    VALUES (p_execution_id, p_name, p_payload, p_now);
    RETURN '';
END;
$$;

-- cache_claim: look up or take the key p_key for p_task_id. A live result (stored, and not
-- expired at p_now) is a hit (p_hit appended to the caller's execution's progress) or, for
-- other arguments, a conflict; it is read without a lock (a stored result changes only once
-- it expired). Otherwise the entry is locked (FOR UPDATE; inserted when missing: ON CONFLICT
-- makes a racing claimer wait and lock the winner's row), so two claimers of one key take
-- turns and exactly one becomes the owner: the other sees its entry, and its owner's task
-- unfinished (busy). An owner that completes stores its result under the same lock
-- (stent_finish_task), so a claimer waiting for it sees the result.
-- Returns (status, result, owner task id, arg digest) as CacheClaim has them.
CREATE FUNCTION stent_cache_claim(
    p_key text, p_task_id text, p_arg_digest text, p_ttl_s double precision,
    p_now timestamptz, p_hit jsonb
) RETURNS TABLE (o_status text, o_result bytea, o_owner text, o_arg_digest text)
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    entry record;
BEGIN
    SELECT c.task_id, c.arg_digest, c.result, c.expires_at INTO entry
    FROM stent_cache AS c WHERE c.key = p_key;
    IF NOT FOUND OR entry.result IS NULL OR entry.expires_at <= p_now THEN
        LOOP
            SELECT c.task_id, c.arg_digest, c.result, c.expires_at INTO entry
            FROM stent_cache AS c WHERE c.key = p_key
            FOR UPDATE;
            EXIT WHEN FOUND;
            INSERT INTO stent_cache (key, task_id, arg_digest, ttl_s, created_at)
            VALUES (p_key, p_task_id, p_arg_digest, p_ttl_s, p_now)
            ON CONFLICT (key) DO NOTHING;
            IF FOUND THEN
                RETURN QUERY SELECT 'owner'::text, NULL::bytea, p_task_id, p_arg_digest;
                RETURN;
            END IF;
        END LOOP;
    END IF;
    IF entry.result IS NOT NULL AND (entry.expires_at IS NULL OR entry.expires_at > p_now) THEN
        IF entry.arg_digest <> p_arg_digest THEN
            RETURN QUERY SELECT 'conflict'::text, NULL::bytea, entry.task_id, entry.arg_digest;
            RETURN;
        END IF;
        UPDATE stent_executions AS e
        SET progress = CASE WHEN jsonb_array_length(e.progress) >= 100 THEN e.progress - 0
                            ELSE e.progress END || p_hit
        FROM stent_tasks AS t
        WHERE t.id = p_task_id AND e.id = t.execution_id;
        RETURN QUERY SELECT 'hit'::text, entry.result, entry.task_id, entry.arg_digest;
        RETURN;
    END IF;
    IF entry.result IS NULL AND entry.task_id <> p_task_id AND EXISTS (
        SELECT 1 FROM stent_tasks
        WHERE id = entry.task_id AND state NOT IN ('completed', 'failed', 'cancelled')
    ) THEN
        RETURN QUERY SELECT 'busy'::text, NULL::bytea, entry.task_id, entry.arg_digest;
        RETURN;
    END IF;
    -- no live result and no other unfinished owner: expired, failed, cancelled, gone, or
    -- this task's own claim again
    UPDATE stent_cache
    SET task_id = p_task_id, arg_digest = p_arg_digest, result = NULL, ttl_s = p_ttl_s,
        expires_at = NULL, created_at = p_now
    WHERE key = p_key;
    RETURN QUERY SELECT 'owner'::text, NULL::bytea, p_task_id, p_arg_digest;
END;
$$;

-- cleanup_executions: delete up to p_limit (NULL: every) terminal executions finished before
-- p_older_than, oldest first, then what belongs to them, each in a statement of its own (see
-- stent_send_signal): tasks (locked FOR UPDATE in ordinal order first, so each execution's
-- root before its other tasks; slot holders give their slots back, last), the cache entries
-- their tasks own without a result (a stored result outlives its execution), dead letters,
-- signals and signal waiters. The executions are deleted first, their WHERE clause re-checked
-- on the newest version (an execution a dead-letter replay revived meanwhile is kept).
-- Returns how many executions were deleted.
CREATE FUNCTION stent_cleanup_executions(
    p_older_than timestamptz, p_limit integer
) RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_gone text[];
    v_released text[];
BEGIN
    WITH gone AS (
        DELETE FROM stent_executions AS e
        USING (SELECT id FROM stent_executions
               WHERE state IN ('completed', 'failed', 'timed_out', 'cancelled')
                 AND finished_at < p_older_than
               ORDER BY finished_at, ordinal
               LIMIT p_limit) AS doomed
        WHERE e.id = doomed.id
          AND e.state IN ('completed', 'failed', 'timed_out', 'cancelled')
          AND e.finished_at < p_older_than
        RETURNING e.id
    )
    SELECT array_agg(gone.id) INTO v_gone FROM gone;
    IF v_gone IS NULL THEN
        RETURN 0;
    END IF;
    WITH doomed AS (
        SELECT id FROM stent_tasks
        WHERE execution_id = ANY (v_gone)
        ORDER BY ordinal
        FOR UPDATE
    ),
    gone_tasks AS (
        DELETE FROM stent_tasks AS t
        USING doomed
        WHERE t.id = doomed.id
        RETURNING t.id, t.step_name, t.slot AND t.state = 'running' AS held
    ),
    unowned AS (
        DELETE FROM stent_cache AS c
        USING gone_tasks
        WHERE c.task_id = gone_tasks.id AND c.result IS NULL
    )
    SELECT coalesce(array_agg(gone_tasks.step_name) FILTER (WHERE gone_tasks.held), '{}')
    INTO v_released
    FROM gone_tasks;
    DELETE FROM stent_dead_letters WHERE execution_id = ANY (v_gone);
    DELETE FROM stent_signals WHERE execution_id = ANY (v_gone);
    DELETE FROM stent_signal_waiters WHERE execution_id = ANY (v_gone);
    PERFORM stent_shift_slots(v_released, '{}');
    RETURN cardinality(v_gone);
END;
$$;
