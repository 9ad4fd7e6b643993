-- Invites (`accounts.registration = "invite"`): single-use codes an administrator made,
-- stored as hashes.
CREATE TABLE invites (
    id TEXT PRIMARY KEY,
    code_hash TEXT NOT NULL UNIQUE,
    created_by TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_by TEXT REFERENCES users(id) ON DELETE SET NULL,
    used_at BIGINT
);

-- Values of the server as a whole: the one-time setup token's hash while there is no
-- administrator (`setup_token`).
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
