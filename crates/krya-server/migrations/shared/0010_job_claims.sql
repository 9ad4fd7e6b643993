-- When each user was last served a job of each kind: the fair order reads this small table
-- instead of every job ever claimed, so a claim costs the same however long the history.
CREATE TABLE job_claims (
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    last_claimed_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, kind)
);
INSERT INTO job_claims (user_id, kind, last_claimed_at)
SELECT user_id, kind, MAX(claimed_at) FROM jobs WHERE claimed_at IS NOT NULL GROUP BY user_id, kind;
-- Runnable jobs of a kind are found without reading finished ones; finished deliveries are
-- pruned by age.
CREATE INDEX idx_jobs_kind_status ON jobs(kind, status, completed_at);
