ALTER TABLE finding_triage DROP COLUMN dismiss_reason;
ALTER TABLE code_analysis_results DROP COLUMN dismiss_reason;
