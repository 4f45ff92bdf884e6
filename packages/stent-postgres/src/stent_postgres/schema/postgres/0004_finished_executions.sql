-- Stent schema for PostgreSQL, version 4: a finished execution leaves no task unfinished.
--
-- When a root task completes or fails a live execution, every other pending, waiting or
-- running task of it is cancelled in the same transaction (stent_finish_task), as a time-out
-- cancels them: finished_at set, the lease dropped, the max_concurrent slots of the running
-- ones given back (last, stent_shift_slots). A worker still running one is fenced out: its
-- later writes find the task cancelled (complete_task, fail_task: no row; retry_task,
-- release_task, suspend_task, renew_leases: not held), and no claim takes a task of a
-- finished execution. cancelled_from keeps the state each was in (NULL for every other
-- task), so that a dead-letter replay that revives a failed execution puts them back as they
-- were (queries/postgres.sql, revive_stopped_tasks), and send_signal keeps their waiter rows.
--
-- Locks keep the global order (queries/postgres.sql): the finishing root is locked first
-- (the task UPDATE); the execution's state, read after that (stent_live_execution), cannot
-- change before this transaction ends, since a cancellation or a time-out freezes the root
-- before it writes the execution. The other tasks are then locked as a cancellation locks
-- them (stent_freeze_execution: pending and running ones and waiting signal waits, in
-- ordinal order; a finishing child or a signal delivery that holds one commits first, or
-- waits for this transaction and then finds its task cancelled), and the remaining waiting
-- tasks by the cancelling UPDATE, all before the cache entries, the execution row and the
-- counter rows. An execution whose tasks are all finished costs one index lookup more.

ALTER TABLE stent_tasks ADD COLUMN cancelled_from text;

-- Finishing a task, as in version 3; a root task that finishes its live execution first
-- cancels the execution's other unfinished tasks (see the header).
CREATE OR REPLACE FUNCTION stent_finish_task(
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

-- send_signal, as in version 3, except that a waiter cancelled by its execution's finish is
-- kept (a dead-letter replay may revive it; cleanup_executions deletes it with the rest).
CREATE OR REPLACE FUNCTION stent_send_signal(
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
