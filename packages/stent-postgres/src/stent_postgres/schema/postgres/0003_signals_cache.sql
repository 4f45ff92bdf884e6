-- Stent schema for PostgreSQL, version 3: step batches, signals, execution effects,
-- idempotency/cache keys, maintenance leases and trace context.
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

ALTER TABLE stent_tasks ADD COLUMN trace_context text;

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

-- The claim's eligibility rule, as in version 1, with signal waits (due at their timeout)
-- among the built-in timers that ignore queues and tags.
CREATE OR REPLACE FUNCTION stent_claimable(
    kind text, step_name text, queue text, tags text[],
    names text[], queues text[], default_queue boolean, worker_tags text[]
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (kind <> 'function' OR step_name = ANY (names))
   AND (kind IN ('sleep', 'signal') OR (
            (queues IS NULL OR queue = ANY (queues) OR (queue IS NULL AND default_queue))
        AND (worker_tags IS NULL OR cardinality(tags) = 0 OR tags && worker_tags)));

-- Lock every pending and running task of an execution, and every waiting signal wait,
-- ancestors first, and go on until a fresh look finds none left unlocked (a step inserted or
-- a parent woken while the locks were being taken). From then on no worker call on a task of
-- it can change anything until this transaction ends, no signal is delivered to it, and no
-- new task can appear under it (a step insert locks its parent FOR SHARE), so its caller's
-- later statements see a settled set. Other waiting tasks are not locked: only the
-- completion of a running child changes them, and it holds the child; a signal wait is
-- completed by send_signal, which holds nothing of the execution but the wait itself.
CREATE OR REPLACE FUNCTION stent_freeze_execution(p_execution_id text) RETURNS void
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

-- Finishing a task, as in version 2, and a completed task's result is stored in the cache
-- entries it owns (an indexed update right after the task's, so in the same transaction and
-- before any execution row is locked).
CREATE OR REPLACE FUNCTION stent_finish_task(
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
    IF done.slot THEN
        UPDATE stent_concurrency SET holders = holders - 1 WHERE step_name = done.step_name;
    END IF;
    RETURN true;
END;
$$;

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
--   after this delivery. Waiters whose task finished otherwise are dropped.
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
      AND t.state IN ('completed', 'failed', 'cancelled');
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
