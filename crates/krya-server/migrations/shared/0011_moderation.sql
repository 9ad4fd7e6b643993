-- Moderation. A job an administrator hid (`hidden = 'admin'`), or one of a suspended
-- user's (`hidden = 'suspended'`), is not public: it leaves the feed and its outputs stop
-- being readable by others, and its owner cannot share it again. Unhiding (or lifting the
-- suspension) makes public again what the same reason hid.
ALTER TABLE jobs ADD COLUMN hidden TEXT;
-- Set while an account is suspended: it cannot sign in and its tokens and keys are refused.
ALTER TABLE users ADD COLUMN suspended_at BIGINT;

-- Users' reports of public items; one per reporter and item. Open until an administrator
-- hides the item or dismisses its reports.
CREATE TABLE reports (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    reporter_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    resolved_at BIGINT,
    -- 'hidden' or 'dismissed'
    resolution TEXT,
    UNIQUE (job_id, reporter_id)
);
CREATE INDEX idx_reports_open ON reports(job_id) WHERE resolved_at IS NULL;
