-- A sender claims a pending notification until claimed_until before it sends, so the
-- task that created it and the redelivery sweep never send the same one at once; a
-- sender that died frees it when the claim expires.
ALTER TABLE {{tables.notifications}} ADD COLUMN claimed_until timestamptz NULL;
CREATE INDEX notifications_stale_idx ON {{tables.notifications}} (updated_at) WHERE status = 'pending';
