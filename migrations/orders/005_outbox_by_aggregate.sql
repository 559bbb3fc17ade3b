-- Reconciliation looks up an order's original event to announce it again.
CREATE INDEX outbox_aggregate_idx ON {{tables.outbox}} (aggregate_id, created_at);
