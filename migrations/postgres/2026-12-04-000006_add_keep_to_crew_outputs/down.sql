DROP INDEX tasks_crew_output_idx;
ALTER TABLE crew_outputs DROP COLUMN keep;
