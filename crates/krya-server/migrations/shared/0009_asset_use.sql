-- When an upload was first used by a job (its input): uploads never used are removed after
-- `limits.unused_upload_hours`.
ALTER TABLE assets ADD COLUMN used_at BIGINT;
UPDATE assets SET used_at = created_at
WHERE job_id IS NULL AND (
    EXISTS (SELECT 1 FROM generations g WHERE g.parameters LIKE '%"' || assets.id || '"%')
    OR EXISTS (SELECT 1 FROM assets o WHERE o.parent_id = assets.id)
);
CREATE INDEX idx_assets_unused ON assets(created_at) WHERE job_id IS NULL AND used_at IS NULL;
