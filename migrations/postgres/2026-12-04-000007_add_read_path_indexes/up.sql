-- File history reads a file's findings and fixes newest first, by
-- (created_at, id); these indexes return them in that order, so a page
-- costs the same however many records the file has.
CREATE INDEX code_analysis_results_file_history_idx ON code_analysis_results (file_path, created_at, id);
CREATE INDEX error_handling_results_file_history_idx ON error_handling_results (file_path, created_at, id);

-- Log queries by crew filter on the level too. With the severity in the
-- index, counting reads only the index and a page reads only the rows it
-- returns. The index keeps the (crew_name, timestamp, id) order of the one
-- it replaces.
CREATE INDEX log_entries_crew_level_idx ON log_entries (crew_name, timestamp, id, severity_number);
DROP INDEX log_entries_crew_name_idx;

-- Findings of a run filtered by minimum priority: with the priority in the
-- index, a page skips lower priorities without reading their rows.
DROP INDEX code_analysis_results_crew_output_idx;
CREATE INDEX code_analysis_results_crew_output_idx ON code_analysis_results (crew_output_id, id, priority);

-- Path prefix filters are LIKE 'prefix%'. Under a collation other than C,
-- PostgreSQL reads such a pattern from an index only with text_pattern_ops,
-- which still serves the equality lookups of the index it replaces.
DROP INDEX code_analysis_results_file_path_idx;
CREATE INDEX code_analysis_results_file_path_idx ON code_analysis_results (file_path text_pattern_ops, id);
