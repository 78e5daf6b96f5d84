DROP INDEX code_analysis_results_crew_output_idx;
CREATE INDEX code_analysis_results_crew_output_idx ON code_analysis_results (crew_output_id, id);
DROP INDEX code_analysis_results_file_path_idx;
CREATE INDEX code_analysis_results_file_path_idx ON code_analysis_results (file_path, id);
CREATE INDEX log_entries_crew_name_idx ON log_entries (crew_name, timestamp, id);
DROP INDEX log_entries_crew_level_idx;
DROP INDEX error_handling_results_file_history_idx;
DROP INDEX code_analysis_results_file_history_idx;
