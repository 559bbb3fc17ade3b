-- A duplicate request answers with the outcome event it emitted for that order the first time.
CREATE INDEX outbox_aggregate_idx ON {{tables.outbox}} (aggregate_id, created_at);
