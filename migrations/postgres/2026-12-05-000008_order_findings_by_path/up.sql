-- Every finding updates each index of its table, and an index keyed by a
-- value spread over the whole table (a path, a fingerprint) costs a page
-- write per finding. No query reads findings by fingerprint, and listings
-- filtered by path now read the file history index in
-- (file_path, created_at, id) order, so two such indexes go.
DROP INDEX code_analysis_results_fingerprint_idx;
DROP INDEX code_analysis_results_file_path_idx;

-- text_pattern_ops orders paths byte by byte, as SQLite does, whatever the
-- database's collation, and serves LIKE 'prefix%' and equality alike.
-- Listings by path sort with its operator (ORDER BY file_path USING ~<~).
DROP INDEX code_analysis_results_file_history_idx;
CREATE INDEX code_analysis_results_file_history_idx ON code_analysis_results (file_path text_pattern_ops, created_at, id);

-- Findings of one run filtered by path, in the same order. New findings
-- belong to the newest runs, so inserts stay at the end of this index.
CREATE INDEX code_analysis_results_run_path_idx ON code_analysis_results (crew_output_id, file_path text_pattern_ops, created_at, id);
