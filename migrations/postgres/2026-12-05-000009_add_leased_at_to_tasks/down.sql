ALTER TABLE tasks DROP COLUMN leased_at;
