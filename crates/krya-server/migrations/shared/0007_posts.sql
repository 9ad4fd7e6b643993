-- Sharing belongs to jobs of any kind: a public job shows in the feed with its output
-- assets and is liked and remixed by its id. Image generations keep their row for the image
-- API; their public flag and like count move to their job.
ALTER TABLE jobs ADD COLUMN is_public BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN likes_count BIGINT NOT NULL DEFAULT 0;
-- The job this one remixes.
ALTER TABLE jobs ADD COLUMN remix_of TEXT;
-- What the feed and listings search and filter by: the request's prompt and model, where
-- its kind has them.
ALTER TABLE jobs ADD COLUMN prompt TEXT;
ALTER TABLE jobs ADD COLUMN model TEXT;
UPDATE jobs SET
    is_public = COALESCE((SELECT g.is_public FROM generations g WHERE g.id = jobs.ref_id), 0),
    likes_count = COALESCE((SELECT g.likes_count FROM generations g WHERE g.id = jobs.ref_id), 0),
    prompt = (SELECT g.prompt FROM generations g WHERE g.id = jobs.ref_id),
    model = (SELECT g.model FROM generations g WHERE g.id = jobs.ref_id),
    remix_of = (SELECT MIN(rj.id) FROM generations g JOIN jobs rj ON rj.kind = 'image' AND rj.ref_id = g.remix_of
                WHERE g.id = jobs.ref_id)
WHERE kind = 'image';
CREATE INDEX idx_jobs_public_new ON jobs(created_at, id) WHERE is_public = 1;
CREATE INDEX idx_jobs_public_top ON jobs(likes_count, created_at) WHERE is_public = 1;
CREATE INDEX idx_jobs_user_public ON jobs(user_id, created_at) WHERE is_public = 1;

CREATE TABLE job_likes (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, job_id)
);
CREATE INDEX idx_job_likes_job ON job_likes(job_id);
INSERT INTO job_likes (user_id, job_id, created_at)
SELECT l.user_id, j.id, l.created_at FROM likes l JOIN jobs j ON j.kind = 'image' AND j.ref_id = l.generation_id;
DROP TABLE likes;

-- One asset per file; finds an image's asset by its file (src/generations/upgrade.rs).
CREATE UNIQUE INDEX idx_assets_blob ON assets(blob_key);

DROP INDEX idx_generations_public;
ALTER TABLE generations DROP COLUMN is_public;
ALTER TABLE generations DROP COLUMN likes_count;
