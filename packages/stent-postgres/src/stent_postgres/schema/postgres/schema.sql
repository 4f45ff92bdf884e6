-- The whole current Stent schema for PostgreSQL (version 2), in one file.
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
-- An execution that is not live is never completed or failed (a late result of a cancelled
-- or timed-out execution), and a cancelling one is settled (stent_settle_execution; its
-- "cancelled" progress entry is p_progress's with the event renamed, so it carries the same
-- time). The counter row is the last lock taken (see queries/postgres.sql).
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
--   execution (stent_freeze_execution), and only then the execution row (FOR UPDATE), and
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

-- Lock every pending and running task of an execution, ancestors first, and go on until a
-- fresh look finds none left unlocked (a step inserted or a parent woken while the locks
-- were being taken). From then on no worker call on a task of it can change anything until
-- this transaction ends, and no new task can appear under it (a step insert locks its
-- parent FOR SHARE), so its caller's later statements see a settled set. Waiting tasks are
-- not locked: only the completion of a running child changes them, and it holds the child.
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
              WHERE execution_id = p_execution_id AND state IN ('pending', 'running')
                AND id <> ALL (v_locked)
              ORDER BY ordinal
              FOR NO KEY UPDATE) AS unfinished;
        v_locked := v_locked || coalesce(v_more, '{}');
        v_round := v_round + 1;
        EXIT WHEN v_round >= 20 OR NOT EXISTS (
            SELECT 1 FROM stent_tasks
            WHERE execution_id = p_execution_id AND state IN ('pending', 'running')
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
