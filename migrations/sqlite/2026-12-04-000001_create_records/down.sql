DROP TABLE log_entries;
DROP TABLE fix_findings;
DROP TABLE error_handling_results;
DROP TABLE code_analysis_results;
DROP TABLE crew_outputs;
