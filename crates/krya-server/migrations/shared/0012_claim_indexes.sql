-- A claim changes a job's status, lease and claim time: every index over those columns is
-- updated, and in a table of every job ever run each such update walks a deep tree. The
-- indexes a claim touches now hold only unfinished jobs (a handful), so its cost does not
-- grow with the history; finished jobs have their own index for pruning. When users were
-- last served is read from job_claims (0010), so (user_id, claimed_at) is no longer needed.
DROP INDEX idx_jobs_status;
DROP INDEX idx_jobs_user_claimed;
DROP INDEX idx_jobs_kind_status;
CREATE INDEX idx_jobs_runnable ON jobs(kind, run_after) WHERE status IN ('pending', 'processing');
CREATE INDEX idx_jobs_finished ON jobs(kind, completed_at) WHERE status IN ('completed', 'failed', 'cancelled');
