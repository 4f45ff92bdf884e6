-- Named queries of SQLiteBackend. Each starts at a "-- name --" line; see migrations.py.
--
-- Every worker write is fenced in its WHERE clause (id, fence, state = 'running'), so a
-- worker whose lease was taken over changes nothing: the statement matches no row.
-- Progress entries are appended in SQL; the log keeps its last 100 entries (as the
-- reference backend does) by dropping the oldest one as a new one goes in.

-- insert_execution --
-- No target on ON CONFLICT: a taken id and a taken idempotency key both insert nothing.
INSERT INTO stent_executions (
    id, function, state, root_task_id, args, queue, tags, priority, idempotency_key,
    deadline, created_at, progress)
VALUES (
    :id, :function, 'pending', :root_task_id, :args, :queue, :tags, :priority,
    :idempotency_key, :deadline, :now, json_array(json(:entry)))
ON CONFLICT DO NOTHING
RETURNING id;

-- execution_id_taken --
-- The id wins over the idempotency key, as in the reference backend.
SELECT coalesce(
    (SELECT id FROM stent_executions WHERE id = :id),
    (SELECT id FROM stent_executions WHERE idempotency_key = :idempotency_key));

-- insert_root_task --
INSERT INTO stent_tasks (
    id, execution_id, parent_id, parent_attempt, seq, step_name, kind, state, args,
    arg_digest, result, queue, tags, priority, due_at, retry_policy, timeout_s,
    max_concurrent, idempotency_key, created_at, finished_at, trace_context)
VALUES (
    :id, :execution_id, :parent_id, :parent_attempt, :seq, :step_name, :kind, :state, :args,
    :arg_digest, :result, :queue, :tags, :priority, :due_at, :retry_policy, :timeout_s,
    :max_concurrent, :idempotency_key, :now, :finished_at, :trace_context);

-- insert_step --
-- Insert-if-absent on the step key, and only while the parent is held at :parent_fence:
-- the parent check and the insert are one statement, so no takeover can slip between them.
-- Nothing inserted means "fenced out" or "key taken"; the caller tells which apart.
INSERT INTO stent_tasks (
    id, execution_id, parent_id, parent_attempt, seq, step_name, kind, state, args,
    arg_digest, result, queue, tags, priority, due_at, retry_policy, timeout_s,
    max_concurrent, idempotency_key, created_at, finished_at,
    worker_id, lease_expires_at, fence, started_at, error, attempt, retries, trace_context)
SELECT
    :id, parent.execution_id, :parent_id, :parent_attempt, :seq, :step_name, :kind, :state,
    :args, :arg_digest, :result, :queue, :tags, :priority, :due_at, :retry_policy,
    :timeout_s, :max_concurrent, :idempotency_key, :now, :finished_at,
    :worker_id, :lease_expires_at, :fence, :started_at, :error, :attempt, :retries,
    :trace_context
FROM stent_tasks AS parent
WHERE parent.id = :parent_id AND parent.fence = :parent_fence AND parent.state = 'running'
ON CONFLICT (parent_id, parent_attempt, seq) DO NOTHING
RETURNING *;

-- task_is_held --
SELECT 1 FROM stent_tasks WHERE id = :id AND fence = :fence AND state = 'running';

-- task_by_step_key --
SELECT * FROM stent_tasks
WHERE parent_id = :parent_id AND parent_attempt = :parent_attempt AND seq = :seq;

-- claim_candidates --
-- Eligible tasks in claim order: due pending tasks, and running tasks whose lease expired
-- (crash recovery). Both arms come out of their partial index already ordered (or, for the
-- few expired ones, sorted), and SQLite merges them lazily, so the caller reads only as many
-- rows as it takes. The eligibility filter sits inside the scan, so an ineligible task at
-- the head never starves eligible ones behind it. Timers (sleep and signal tasks) ignore
-- queues and tags.
SELECT t.ordinal, t.priority, t.due_at, t.step_name, t.max_concurrent
FROM stent_tasks AS t
WHERE t.state = 'pending' AND t.due_at <= :now
  AND EXISTS (SELECT 1 FROM stent_executions AS e
              WHERE e.id = t.execution_id AND e.state IN ('pending', 'running'))
  AND (t.kind <> 'function' OR t.step_name IN (SELECT value FROM json_each(:names)))
  AND (t.kind IN ('sleep', 'signal') OR (
        (:queues IS NULL
         OR t.queue IN (SELECT value FROM json_each(:queues))
         OR (t.queue IS NULL AND :default_queue))
    AND (:tags IS NULL OR t.tags = '[]'
         OR CASE WHEN json_valid(t.tags) THEN EXISTS (SELECT 1 FROM json_each(t.tags) AS tag
                    WHERE tag.value IN (SELECT value FROM json_each(:tags))) END)))
UNION ALL
SELECT t.ordinal, t.priority, t.due_at, t.step_name, t.max_concurrent
FROM stent_tasks AS t
WHERE t.state = 'running' AND t.lease_expires_at < :now
  AND EXISTS (SELECT 1 FROM stent_executions AS e
              WHERE e.id = t.execution_id AND e.state IN ('pending', 'running'))
  AND (t.kind <> 'function' OR t.step_name IN (SELECT value FROM json_each(:names)))
  AND (t.kind IN ('sleep', 'signal') OR (
        (:queues IS NULL
         OR t.queue IN (SELECT value FROM json_each(:queues))
         OR (t.queue IS NULL AND :default_queue))
    AND (:tags IS NULL OR t.tags = '[]'
         OR CASE WHEN json_valid(t.tags) THEN EXISTS (SELECT 1 FROM json_each(t.tags) AS tag
                    WHERE tag.value IN (SELECT value FROM json_each(:tags))) END)))
ORDER BY 2 DESC, 3, 1;

-- count_live_instances --
-- Running instances of a capped function whose lease is live (an expired one is a crash
-- waiting to be recovered, and does not hold a slot).
SELECT count(*) FROM stent_tasks
WHERE state = 'running' AND lease_expires_at >= :now AND step_name = :step_name;

-- claim_lease --
-- Taking over a running task whose lease expired is a crash recovery, charged to the task
-- (crash_count + 1) unless it has an unfinished step at its current attempt: then it was
-- only awaiting that step when its worker died (the step key index finds its steps). A task
-- charged before is charged again only if the run that died was marked alone (0004_alone).
UPDATE stent_tasks
SET crash_count = crash_count + (state = 'running' AND (crash_count = 0 OR alone) AND NOT EXISTS (
        SELECT 1 FROM stent_tasks AS step
        WHERE step.parent_id = stent_tasks.id AND step.parent_attempt = stent_tasks.attempt
          AND step.state NOT IN ('completed', 'failed', 'cancelled'))),
    state = 'running',
    fence = fence + 1,
    worker_id = :worker_id,
    lease_expires_at = :lease_until,
    started_at = coalesce(started_at, :now),
    alone = 0
WHERE ordinal IN (SELECT value FROM json_each(:ordinals))
RETURNING *;

-- start_executions --
UPDATE stent_executions
SET state = 'running',
    started_at = :now,
    progress = json_insert(
        CASE WHEN json_array_length(progress) >= 100 THEN json_remove(progress, '$[0]')
             ELSE progress END,
        '$[#]', json(:entry))
WHERE id IN (SELECT value FROM json_each(:ids)) AND state = 'pending';

-- load_steps --
SELECT id, seq, step_name, kind, arg_digest, state, result, error, due_at
FROM stent_tasks
WHERE parent_id = :parent_id AND parent_attempt = :attempt
ORDER BY seq;

-- complete_task --
UPDATE stent_tasks
SET state = 'completed', result = :result, error = NULL, finished_at = :now,
    worker_id = NULL, lease_expires_at = NULL
WHERE id = :id AND fence = :fence AND state = 'running'
RETURNING parent_id, execution_id;

-- fail_task --
UPDATE stent_tasks
SET state = 'failed', error = :error, finished_at = :now,
    worker_id = NULL, lease_expires_at = NULL
WHERE id = :id AND fence = :fence AND state = 'running'
RETURNING parent_id, execution_id, step_name, queue, retries;

-- wake_parent --
-- A suspended parent becomes claimable; in the same transaction as the child's outcome, so
-- the wake-up cannot be lost (see suspend_task for the other half).
UPDATE stent_tasks SET state = 'pending' WHERE id = :parent_id AND state = 'waiting';

-- finish_execution --
UPDATE stent_executions
SET state = :state,
    result = :result,
    error = :error,
    finished_at = :now,
    progress = json_insert(
        CASE WHEN json_array_length(progress) >= 100 THEN json_remove(progress, '$[0]')
             ELSE progress END,
        '$[#]', json(:entry))
WHERE id = :execution_id
  AND state IN ('pending', 'running');

-- stop_unfinished_tasks --
-- The execution :id has just finished (completed or failed): its other pending, waiting and
-- running tasks are cancelled, each remembering the state it was in (SET reads the old row),
-- and a running one's worker is fenced out (its later writes match no row).
UPDATE stent_tasks
SET cancelled_from = state, state = 'cancelled', finished_at = :now, worker_id = NULL,
    lease_expires_at = NULL
WHERE execution_id = :id AND state IN ('pending', 'waiting', 'running');

-- upsert_dead_letter --
-- A task dead-lettered again keeps its place (ordinal) in the list, as a dict key would.
INSERT INTO stent_dead_letters (
    task_id, execution_id, step_name, queue, reason, error, created_at, retries)
VALUES (:task_id, :execution_id, :step_name, :queue, :reason, :error, :now, :retries)
ON CONFLICT (task_id) DO UPDATE SET
    execution_id = excluded.execution_id,
    step_name = excluded.step_name,
    queue = excluded.queue,
    reason = excluded.reason,
    error = excluded.error,
    created_at = excluded.created_at,
    retries = excluded.retries;

-- retry_task --
UPDATE stent_tasks
SET state = 'pending', error = :error, due_at = :due_at, attempt = attempt + 1,
    retries = retries + 1, worker_id = NULL, lease_expires_at = NULL
WHERE id = :id AND fence = :fence AND state = 'running'
RETURNING execution_id, step_name, attempt;

-- mark_alone --
UPDATE stent_tasks SET alone = :alone WHERE id = :id AND fence = :fence AND state = 'running';

-- release_task --
UPDATE stent_tasks
SET state = 'pending', worker_id = NULL, lease_expires_at = NULL
WHERE id = :id AND fence = :fence AND state = 'running';

-- suspend_task --
-- A child may have finished between the worker deciding to suspend and this write; looking
-- at the children in the same statement is what makes the wake-up impossible to lose.
UPDATE stent_tasks
SET state = CASE WHEN EXISTS (
            SELECT 1 FROM stent_tasks AS child
            WHERE child.id IN (SELECT value FROM json_each(:awaited))
              AND child.state IN ('completed', 'failed', 'cancelled'))
        THEN 'pending' ELSE 'waiting' END,
    worker_id = NULL,
    lease_expires_at = NULL
WHERE id = :id AND fence = :fence AND state = 'running'
RETURNING state, execution_id, step_name;

-- append_progress --
UPDATE stent_executions
SET progress = json_insert(
        CASE WHEN json_array_length(progress) >= 100 THEN json_remove(progress, '$[0]')
             ELSE progress END,
        '$[#]', json(:entry))
WHERE id = :execution_id;

-- renew_lease --
UPDATE stent_tasks
SET lease_expires_at = :lease_until
WHERE id = :id AND fence = :fence AND state = 'running' AND worker_id = :worker_id;

-- get_outcomes --
SELECT id, state, result, error FROM stent_tasks
WHERE id IN (SELECT value FROM json_each(:ids))
  AND state IN ('completed', 'failed', 'cancelled');

-- get_execution --
SELECT * FROM stent_executions WHERE id = :id;

-- list_executions --
SELECT * FROM stent_executions
WHERE :state IS NULL OR state = :state
ORDER BY created_at DESC, ordinal DESC
LIMIT :limit OFFSET :offset;

-- get_task --
SELECT * FROM stent_tasks WHERE id = :id;

-- update_task --
-- An operator override. Bumping the fence is what fences out any worker still holding it.
UPDATE stent_tasks
SET state = :state, worker_id = :worker_id, lease_expires_at = :lease_expires_at,
    due_at = :due_at, priority = :priority, queue = :queue, tags = :tags,
    retries = :retries, crash_count = :crash_count, fence = fence + 1
WHERE id = :id
RETURNING fence, parent_id;

-- list_tasks_for_execution --
SELECT * FROM stent_tasks WHERE execution_id = :execution_id ORDER BY ordinal;

-- count_tasks --
SELECT count(*) FROM stent_tasks
WHERE (:queue IS NULL OR queue = :queue) AND (:state IS NULL OR state = :state);

-- count_executions --
SELECT count(*) FROM stent_executions WHERE :state IS NULL OR state = :state;

-- queue_depth --
SELECT count(*) FROM stent_tasks WHERE state = 'pending' AND queue IS :queue;

-- doomed_executions --
-- Terminal executions finished before the cutoff, oldest first; :limit -1 means all.
SELECT id FROM stent_executions
WHERE state IN ('completed', 'failed', 'timed_out', 'cancelled') AND finished_at < :cutoff
ORDER BY finished_at, ordinal
LIMIT :limit;

-- cleanup_dead_letters_of_executions --
DELETE FROM stent_dead_letters
WHERE task_id IN (
    SELECT t.id FROM stent_tasks AS t
    WHERE t.execution_id IN (SELECT value FROM json_each(:ids)));

-- cleanup_unfinished_cache_of_executions --
-- Entries without a result owned by tasks about to go (those holding a result stay until
-- they expire: cleanup_cache).
DELETE FROM stent_cache
WHERE result IS NULL
  AND task_id IN (
    SELECT t.id FROM stent_tasks AS t
    WHERE t.execution_id IN (SELECT value FROM json_each(:ids)));

-- cleanup_signals --
DELETE FROM stent_signals WHERE execution_id IN (SELECT value FROM json_each(:ids));

-- cleanup_signal_waiters --
DELETE FROM stent_signal_waiters WHERE execution_id IN (SELECT value FROM json_each(:ids));

-- cleanup_tasks --
DELETE FROM stent_tasks WHERE execution_id IN (SELECT value FROM json_each(:ids));

-- cleanup_executions --
DELETE FROM stent_executions WHERE id IN (SELECT value FROM json_each(:ids));

-- cleanup_dead_letters --
-- Oldest first (ties: by task id, as the reference backend); :limit -1 means all.
DELETE FROM stent_dead_letters
WHERE ordinal IN (
    SELECT ordinal FROM stent_dead_letters WHERE created_at < :cutoff
    ORDER BY created_at, task_id
    LIMIT :limit);

-- list_dead_letters --
-- Newest first; equal times keep insertion order, like a stable sort.
SELECT * FROM stent_dead_letters ORDER BY created_at DESC, ordinal LIMIT :limit;

-- get_dead_letter --
SELECT * FROM stent_dead_letters WHERE task_id = :task_id;

-- discard_dead_letter --
DELETE FROM stent_dead_letters WHERE task_id = :task_id RETURNING task_id;

-- take_dead_letter_for_replay --
-- Only a task that is still failed can be replayed; otherwise the entry stays.
DELETE FROM stent_dead_letters
WHERE task_id = :task_id
  AND EXISTS (SELECT 1 FROM stent_tasks WHERE id = :task_id AND state = 'failed')
RETURNING task_id;

-- reset_task_for_replay --
UPDATE stent_tasks
SET state = 'pending',
    attempt = attempt + 1,
    retries = CASE WHEN :reset_retries THEN 0 ELSE retries END,
    queue = CASE WHEN :set_queue THEN :queue ELSE queue END,
    crash_count = 0,
    due_at = :now,
    error = NULL,
    finished_at = NULL,
    worker_id = NULL,
    lease_expires_at = NULL,
    fence = fence + 1
WHERE id = :task_id
RETURNING parent_id, execution_id;

-- revive_ancestor --
-- A caller that failed because of the replayed task resumes by replay at the same attempt.
UPDATE stent_tasks
SET state = 'waiting', error = NULL, finished_at = NULL, fence = fence + 1
WHERE id = :id AND state = 'failed'
RETURNING parent_id;

-- revive_execution --
UPDATE stent_executions
SET state = 'running',
    error = NULL,
    finished_at = NULL,
    progress = json_insert(
        CASE WHEN json_array_length(progress) >= 100 THEN json_remove(progress, '$[0]')
             ELSE progress END,
        '$[#]', json(:entry))
WHERE id = :execution_id AND state = 'failed';

-- revive_stopped_tasks --
-- The tasks the failure of a revived execution cancelled are put back as they were
-- (waiting, or pending; a running one's worker was fenced out, so it is pending again).
UPDATE stent_tasks
SET state = CASE WHEN cancelled_from = 'waiting' THEN 'waiting' ELSE 'pending' END,
    cancelled_from = NULL, finished_at = NULL, fence = fence + 1
WHERE execution_id = :execution_id AND state = 'cancelled' AND cancelled_from IS NOT NULL;

-- task_execution_state --
-- The state of the execution of a task held at :fence (no row: not held).
SELECT t.execution_id, t.worker_id, e.state AS execution_state
FROM stent_tasks AS t JOIN stent_executions AS e ON e.id = t.execution_id
WHERE t.id = :id AND t.fence = :fence AND t.state = 'running';

-- parent_execution_state --
SELECT e.state FROM stent_tasks AS t JOIN stent_executions AS e ON e.id = t.execution_id
WHERE t.id = :parent_id;

-- execution_state --
SELECT state FROM stent_executions WHERE id = :id;

-- cancel_held_task --
UPDATE stent_tasks
SET state = 'cancelled', finished_at = :now, worker_id = NULL, lease_expires_at = NULL
WHERE id = :id AND fence = :fence AND state = 'running'
RETURNING execution_id, parent_id;

-- cancel_unfinished_tasks --
-- Pending and waiting tasks of an execution; running ones too when :running.
UPDATE stent_tasks
SET state = 'cancelled', finished_at = :now, worker_id = NULL, lease_expires_at = NULL
WHERE execution_id = :id
  AND (state IN ('pending', 'waiting') OR (:running AND state = 'running'));

-- mark_execution_cancelling --
UPDATE stent_executions
SET state = 'cancelling', error = :error,
    progress = json_insert(
        CASE WHEN json_array_length(progress) >= 100 THEN json_remove(progress, '$[0]')
             ELSE progress END,
        '$[#]', json(:entry))
WHERE id = :id AND state IN ('pending', 'running');

-- settle_cancelling_execution --
-- A cancelling execution is cancelled once none of its tasks runs any more.
UPDATE stent_executions
SET state = 'cancelled', finished_at = :now,
    progress = json_insert(
        CASE WHEN json_array_length(progress) >= 100 THEN json_remove(progress, '$[0]')
             ELSE progress END,
        '$[#]', json(:entry))
WHERE id = :id AND state = 'cancelling'
  AND NOT EXISTS (SELECT 1 FROM stent_tasks WHERE execution_id = :id AND state = 'running');

-- expired_executions --
SELECT id FROM stent_executions
WHERE state IN ('pending', 'running') AND deadline IS NOT NULL AND deadline < :now
ORDER BY deadline
LIMIT :limit;

-- time_out_execution --
UPDATE stent_executions
SET state = 'timed_out', error = :error, finished_at = :now,
    progress = json_insert(
        CASE WHEN json_array_length(progress) >= 100 THEN json_remove(progress, '$[0]')
             ELSE progress END,
        '$[#]', json(:entry))
WHERE id = :id AND state IN ('pending', 'running');

-- orphans_of_stopped_executions --
-- Running tasks of cancelling or finished executions whose workers died (lease expired).
SELECT t.id, t.fence, t.execution_id
FROM stent_tasks AS t JOIN stent_executions AS e ON e.id = t.execution_id
WHERE t.state = 'running' AND t.lease_expires_at < :now
  AND e.state NOT IN ('pending', 'running');

-- dead_letter_execution_stopped --
SELECT 1 FROM stent_tasks AS t JOIN stent_executions AS e ON e.id = t.execution_id
WHERE t.id = :task_id AND e.state IN ('cancelling', 'cancelled', 'timed_out');

-- held_parent --
-- The parent of a batch of steps: its execution and whether it is held at :fence.
SELECT t.execution_id, t.fence = :fence AND t.state = 'running' AS held,
       e.state AS execution_state
FROM stent_tasks AS t LEFT JOIN stent_executions AS e ON e.id = t.execution_id
WHERE t.id = :id;

-- steps_by_seqs --
SELECT * FROM stent_tasks
WHERE parent_id = :parent_id AND parent_attempt = :parent_attempt
  AND seq IN (SELECT value FROM json_each(:seqs));

-- insert_steps --
-- One row per call of executemany; the caller checked the parent's fence in this same
-- transaction. A taken step key inserts nothing.
INSERT INTO stent_tasks (
    id, execution_id, parent_id, parent_attempt, seq, step_name, kind, state, args,
    arg_digest, result, queue, tags, priority, due_at, retry_policy, timeout_s,
    max_concurrent, idempotency_key, created_at, finished_at,
    fence, started_at, error, attempt, retries, trace_context)
VALUES (
    :id, :execution_id, :parent_id, :parent_attempt, :seq, :step_name, :kind, :state,
    :args, :arg_digest, :result, :queue, :tags, :priority, :due_at, :retry_policy,
    :timeout_s, :max_concurrent, :idempotency_key, :now, :finished_at,
    0, :started_at, :error, :attempt, :retries, :trace_context)
ON CONFLICT (parent_id, parent_attempt, seq) DO NOTHING;

-- store_cached_result --
-- The cache entries a completing task owns get its result (one probe of stent_cache_task).
-- The expiry is summed in whole microseconds (:now_us), then made seconds: the very double
-- the engine's now + timedelta(seconds=ttl_s) stores, so a claim at exactly that instant
-- finds the result expired, as the reference backend does. NULL ttl_s: never expires.
UPDATE stent_cache
SET result = :result,
    expires_at = (:now_us + CAST(round(ttl_s * 1000000) AS INTEGER)) / 1000000.0
WHERE task_id = :id AND result IS NULL;

-- oldest_signal --
SELECT ordinal, payload FROM stent_signals
WHERE execution_id = :execution_id AND name = :name AND consumed_by IS NULL
ORDER BY ordinal
LIMIT 1;

-- consume_signal --
UPDATE stent_signals SET consumed_by = :task_id WHERE ordinal = :ordinal;

-- insert_signal_waiter --
INSERT INTO stent_signal_waiters (task_id, execution_id, name)
VALUES (:task_id, :execution_id, :name);

-- oldest_signal_waiter --
-- Waiters whose task was claimed (its timeout is due) are skipped but kept: a released one
-- waits again. So are waiters left behind by an attempt of their parent that is over (the
-- parent moved on to a later attempt, or finished): nobody would read what they receive.
SELECT w.ordinal, w.task_id
FROM stent_signal_waiters AS w
JOIN stent_tasks AS t ON t.id = w.task_id
JOIN stent_tasks AS parent ON parent.id = t.parent_id
WHERE w.execution_id = :execution_id AND w.name = :name
  AND t.state IN ('pending', 'waiting')
  AND parent.attempt = t.parent_attempt
  AND parent.state NOT IN ('completed', 'failed', 'cancelled')
ORDER BY w.ordinal
LIMIT 1;

-- drop_finished_signal_waiters --
-- Waiters whose task finished (timed out, cancelled) never wait again; those cancelled by
-- their execution's finish stay, as a dead-letter replay may revive them.
DELETE FROM stent_signal_waiters
WHERE execution_id = :execution_id AND name = :name
  AND EXISTS (SELECT 1 FROM stent_tasks AS t
              WHERE t.id = stent_signal_waiters.task_id
                AND (t.state IN ('completed', 'failed')
                     OR (t.state = 'cancelled' AND t.cancelled_from IS NULL)));

-- delete_signal_waiter --
DELETE FROM stent_signal_waiters WHERE ordinal = :ordinal;

-- insert_signal --
INSERT INTO stent_signals (execution_id, name, payload, consumed_by, created_at)
VALUES (:execution_id, :name, :payload, :consumed_by, :now);

-- deliver_signal --
-- A waiting signal task receives the payload as its result.
UPDATE stent_tasks
SET state = 'completed', result = :payload, error = NULL, finished_at = :now,
    started_at = coalesce(started_at, :now), worker_id = NULL, lease_expires_at = NULL
WHERE id = :id AND state IN ('pending', 'waiting')
RETURNING parent_id, execution_id;

-- execution_exists --
SELECT 1 FROM stent_executions WHERE id = :id;

-- increment_counter --
UPDATE stent_executions
SET counters = json_set(counters, :path, coalesce(json_extract(counters, :path), 0) + :delta)
WHERE id = :execution_id;

-- set_custom_state --
UPDATE stent_executions
SET custom_state = json_set(custom_state, :path, json(:value))
WHERE id = :execution_id;

-- cache_entry --
-- A cache entry with the state of its owner (NULL: the owner is gone).
SELECT c.task_id, c.arg_digest, c.result, c.expires_at, t.state AS owner_state
FROM stent_cache AS c LEFT JOIN stent_tasks AS t ON t.id = c.task_id
WHERE c.key = :key;

-- take_cache_key --
INSERT INTO stent_cache (key, task_id, arg_digest, result, ttl_s, expires_at, created_at)
VALUES (:key, :task_id, :arg_digest, NULL, :ttl_s, NULL, :now)
ON CONFLICT (key) DO UPDATE SET
    task_id = excluded.task_id,
    arg_digest = excluded.arg_digest,
    result = NULL,
    ttl_s = excluded.ttl_s,
    expires_at = NULL,
    created_at = excluded.created_at;

-- append_progress_of_task --
UPDATE stent_executions
SET progress = json_insert(
        CASE WHEN json_array_length(progress) >= 100 THEN json_remove(progress, '$[0]')
             ELSE progress END,
        '$[#]', json(:entry))
WHERE id = (SELECT execution_id FROM stent_tasks WHERE id = :task_id);

-- cleanup_cache --
-- Oldest expiry first.
DELETE FROM stent_cache
WHERE key IN (
    SELECT key FROM stent_cache
    WHERE expires_at < :now
    ORDER BY expires_at, key
    LIMIT :limit);

-- acquire_maintenance --
-- Taken when free, expired before :now, or already held by :holder (renewal).
INSERT INTO stent_maintenance (name, holder, lease_until)
VALUES (:name, :holder, :until)
ON CONFLICT (name) DO UPDATE SET
    holder = excluded.holder,
    lease_until = excluded.lease_until
WHERE stent_maintenance.holder = excluded.holder OR stent_maintenance.lease_until < :now
RETURNING name;
