-- Every job is one record whatever its kind (src/tasks/): its request, cost, progress and
-- end live on its `jobs` row; image jobs keep their `generations` row beside it.
ALTER TABLE jobs ADD COLUMN params TEXT;
ALTER TABLE jobs ADD COLUMN cost BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN progress_step BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN progress_total BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN error_code TEXT;
ALTER TABLE jobs ADD COLUMN started_at BIGINT;
ALTER TABLE jobs ADD COLUMN completed_at BIGINT;
ALTER TABLE jobs ADD COLUMN webhook_url TEXT;
-- Image jobs made before this: their credits were on the generation.
UPDATE jobs SET cost = COALESCE((SELECT g.credits_used FROM generations g WHERE g.id = jobs.ref_id), 0) WHERE kind = 'image';
CREATE INDEX idx_jobs_user_kind ON jobs(user_id, kind, created_at);
-- Live-canvas captures were generations without a job: each gets one, ended as it began.
INSERT INTO jobs (id, kind, ref_id, user_id, status, attempts, max_attempts, run_after, created_at, cost, started_at, completed_at)
SELECT 'capture-' || g.id, 'image', g.id, g.user_id, g.status, 1, 1, g.created_at * 1000, g.created_at * 1000, 0,
       g.created_at * 1000, g.created_at * 1000
FROM generations g WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.ref_id = g.id AND j.kind = 'image');

-- Every output and upload is an asset: any kind of file, with its lineage.
ALTER TABLE assets ADD COLUMN kind TEXT NOT NULL DEFAULT 'image';
ALTER TABLE assets ADD COLUMN job_id TEXT;
ALTER TABLE assets ADD COLUMN parent_id TEXT;
ALTER TABLE assets ADD COLUMN duration_ms BIGINT;
ALTER TABLE assets ADD COLUMN thumb_key TEXT;
ALTER TABLE assets ADD COLUMN visibility TEXT NOT NULL DEFAULT 'private';
CREATE INDEX idx_assets_job ON assets(job_id);

-- Tables of migration 0004 that nothing reads; the issues that need them make their own.
DROP TABLE videos;
DROP TABLE trained_models;
DROP TABLE workflows;
DROP TABLE projects;
DROP TABLE subscriptions;
