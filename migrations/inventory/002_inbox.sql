-- Event ids a consumer of this schema has applied, recorded in the same
-- transaction as the effect: a redelivered event finds its id and does nothing.
CREATE TABLE {{tables.inbox}} (
    event_id     uuid        NOT NULL,
    consumer     text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, consumer)
);
