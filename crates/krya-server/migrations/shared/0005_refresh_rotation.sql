-- When a refresh token was spent by rotation (NULL: never, or revoked otherwise): a reuse
-- moments later is two tabs refreshing at once, not theft.
ALTER TABLE sessions ADD COLUMN rotated_at BIGINT;
