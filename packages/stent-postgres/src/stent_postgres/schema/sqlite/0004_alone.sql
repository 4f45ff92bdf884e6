-- Stent schema for SQLite, version 4: a task's run can be marked alone on its worker.
--
-- A task taken over after its worker died (crash_count > 0, a suspect) may be what killed
-- it, so a worker runs it alone and says so (mark_alone). A later take-over charges a
-- suspect's crash_count only when the run that died was marked alone: a death it shared
-- with other work is not held against it (the first death, at crash_count 0, is charged as
-- before). Every claim clears the mark; it means nothing outside state 'running'.

ALTER TABLE stent_tasks ADD COLUMN alone INTEGER NOT NULL DEFAULT 0;
