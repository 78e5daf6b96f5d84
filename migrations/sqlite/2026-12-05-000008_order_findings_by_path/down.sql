DROP INDEX code_analysis_results_run_path_idx;
CREATE INDEX code_analysis_results_file_path_idx ON code_analysis_results (file_path, id);
CREATE INDEX code_analysis_results_fingerprint_idx ON code_analysis_results (fingerprint);
