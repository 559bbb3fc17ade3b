-- Events written in the same transaction as the change they announce; the relay
-- publishes rows whose published_at is null (claimed with FOR UPDATE SKIP LOCKED).
CREATE TABLE {{tables.outbox}} (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    event_type    text        NOT NULL,
    aggregate_id  uuid        NULL,
    payload       jsonb       NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz NULL,
    attempts      integer     NOT NULL DEFAULT 0
);
CREATE INDEX outbox_unpublished_idx ON {{tables.outbox}} (created_at) WHERE published_at IS NULL;
