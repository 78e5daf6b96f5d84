DROP INDEX code_analysis_results_run_path_idx;
DROP INDEX code_analysis_results_file_history_idx;
CREATE INDEX code_analysis_results_file_history_idx ON code_analysis_results (file_path, created_at, id);
CREATE INDEX code_analysis_results_file_path_idx ON code_analysis_results (file_path text_pattern_ops, id);
CREATE INDEX code_analysis_results_fingerprint_idx ON code_analysis_results (fingerprint);
