CREATE TABLE users (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    handle TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    is_admin BIGINT NOT NULL DEFAULT 0,
    credits_remaining BIGINT NOT NULL DEFAULT 50,
    subscription_tier TEXT NOT NULL DEFAULT 'free',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
