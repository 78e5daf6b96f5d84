-- When the current or last lease of a task began; a task's crew output
-- counts its run from then.
ALTER TABLE tasks ADD COLUMN leased_at BIGINT;
