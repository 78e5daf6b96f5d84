-- Why a finding was dismissed, as a DismissReason enum number; 0 when the
-- finding is not dismissed or no category was given.
ALTER TABLE code_analysis_results ADD COLUMN dismiss_reason INTEGER NOT NULL DEFAULT 0;
ALTER TABLE finding_triage ADD COLUMN dismiss_reason INTEGER NOT NULL DEFAULT 0;
