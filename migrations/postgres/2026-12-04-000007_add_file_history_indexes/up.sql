-- File history reads a file's findings and fixes newest first, by
-- (created_at, id); these indexes return them in that order, so a page
-- costs the same however many records the file has.
CREATE INDEX code_analysis_results_file_history_idx ON code_analysis_results (file_path, created_at, id);
CREATE INDEX error_handling_results_file_history_idx ON error_handling_results (file_path, created_at, id);
