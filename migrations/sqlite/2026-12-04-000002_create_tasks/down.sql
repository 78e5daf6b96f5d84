DROP INDEX code_analysis_results_created_at_idx;
DROP INDEX log_entries_created_at_idx;
DROP TABLE tasks;
