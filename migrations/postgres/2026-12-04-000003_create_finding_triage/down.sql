DROP INDEX crew_outputs_crew_status_idx;
DROP TABLE finding_triage;
