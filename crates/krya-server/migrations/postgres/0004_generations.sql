-- Seed §5: generations and the rest of the core tables, adapted: text ids, epoch-second
-- timestamps, JSON kept as TEXT (one query layer for both databases), plus the job queue,
-- uploaded assets, result images, likes and usage.
ALTER TABLE users ADD COLUMN avatar_url TEXT;
ALTER TABLE users ADD COLUMN bio TEXT NOT NULL DEFAULT '';
-- Day number (UTC) of the last daily credit top-up.
ALTER TABLE users ADD COLUMN credits_day BIGINT NOT NULL DEFAULT 0;
-- Signs this user's webhooks (made on first use).
ALTER TABLE users ADD COLUMN webhook_secret TEXT;

CREATE TABLE generations (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    type TEXT NOT NULL DEFAULT 'image',
    prompt TEXT NOT NULL,
    negative_prompt TEXT,
    model TEXT NOT NULL,
    parameters TEXT NOT NULL,
    status TEXT NOT NULL,
    seed BIGINT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    batch_size BIGINT NOT NULL,
    is_public BIGINT NOT NULL DEFAULT 0,
    likes_count BIGINT NOT NULL DEFAULT 0,
    credits_used BIGINT NOT NULL,
    progress_step BIGINT NOT NULL DEFAULT 0,
    progress_total BIGINT NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT,
    idempotency_key TEXT,
    webhook_url TEXT,
    remix_of TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    completed_at BIGINT,
    UNIQUE (user_id, idempotency_key)
);
CREATE INDEX idx_generations_user_id ON generations(user_id, created_at DESC, id DESC);
CREATE INDEX idx_generations_created_at ON generations(created_at DESC);
CREATE INDEX idx_generations_public ON generations(is_public, created_at DESC) WHERE is_public = 1;

CREATE TABLE images (
    id TEXT PRIMARY KEY,
    generation_id TEXT NOT NULL REFERENCES generations(id) ON DELETE CASCADE,
    idx BIGINT NOT NULL,
    seed BIGINT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    png_key TEXT NOT NULL,
    thumb_key TEXT NOT NULL,
    UNIQUE (generation_id, idx)
);

-- The durable queue. Times in milliseconds; `seq` gives submission order.
CREATE TABLE jobs (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    ref_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    run_after BIGINT NOT NULL,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    -- When the job was last claimed: fair order serves the user served longest ago first.
    claimed_at BIGINT,
    last_error TEXT,
    -- What the job needs besides ref_id (a webhook's URL and body).
    payload TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX idx_jobs_status ON jobs(status, run_after);
CREATE INDEX idx_jobs_ref ON jobs(ref_id);
CREATE INDEX idx_jobs_user_claimed ON jobs(user_id, claimed_at);

CREATE TABLE assets (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    blob_key TEXT NOT NULL,
    mime TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX idx_assets_user_id ON assets(user_id);

CREATE TABLE likes (
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    generation_id TEXT NOT NULL REFERENCES generations(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, generation_id)
);

CREATE TABLE usage_logs (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    action_type TEXT NOT NULL,
    credits_used BIGINT NOT NULL,
    ref_id TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL
);
CREATE INDEX idx_usage_logs_user_id_date ON usage_logs(user_id, created_at);

CREATE TABLE videos (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    prompt TEXT,
    model TEXT,
    parameters TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'pending',
    video_key TEXT,
    thumb_key TEXT,
    duration_seconds DOUBLE PRECISION,
    is_public BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE INDEX idx_videos_user_id ON videos(user_id);

CREATE TABLE trained_models (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    type TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    base_model TEXT,
    training_images TEXT NOT NULL DEFAULT '[]',
    model_key TEXT,
    trigger_word TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE workflows (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT,
    description TEXT,
    nodes TEXT NOT NULL,
    connections TEXT NOT NULL,
    is_public BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX idx_workflows_user_id ON workflows(user_id);

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT,
    type TEXT,
    data TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    tier TEXT NOT NULL,
    external_id TEXT,
    status TEXT,
    current_period_start BIGINT,
    current_period_end BIGINT,
    created_at BIGINT NOT NULL
);
