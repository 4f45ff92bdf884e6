-- Stent schema for SQLite, version 3: a finished execution leaves no task unfinished.
--
-- When a root task completes or fails, every other pending, waiting or running task of its
-- execution is cancelled in the same transaction; cancelled_from keeps the state each was in
-- (NULL for every other task), so that a dead-letter replay which revives a failed
-- execution puts them back as they were (a running one: pending).
ALTER TABLE stent_tasks ADD COLUMN cancelled_from TEXT;
