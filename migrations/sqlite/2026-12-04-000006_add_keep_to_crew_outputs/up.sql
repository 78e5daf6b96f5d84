-- 1 marks a crew output that retention never deletes and that
-- DeleteCrewOutput deletes only with `force`; 0 otherwise. An integer
-- rather than a boolean, so that both backends store the same type.
ALTER TABLE crew_outputs ADD COLUMN keep INTEGER NOT NULL DEFAULT 0 CHECK (keep IN (0, 1));

-- Deleting a crew output sets tasks.crew_output_id to NULL; without this
-- index each deleted crew output scans the whole tasks table.
CREATE INDEX tasks_crew_output_idx ON tasks (crew_output_id);
