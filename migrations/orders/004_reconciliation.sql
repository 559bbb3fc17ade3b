-- Reconciliation of the order saga. An order that is pending, or fulfilled/cancelled
-- while inventory has not confirmed the stock effect (stock_settled_at), re-announces
-- its event when announced_at is older than a bound that doubles per announcement
-- (announcements). A lost message therefore never strands an order.
ALTER TABLE {{tables.orders}}
    ADD COLUMN announced_at      timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN announcements     integer     NOT NULL DEFAULT 0,
    ADD COLUMN stock_settled_at  timestamptz NULL;

-- Orders that were already terminal when this ran are taken as settled.
UPDATE {{tables.orders}} SET stock_settled_at = updated_at WHERE status IN ('fulfilled', 'cancelled', 'rejected');

CREATE INDEX orders_unsettled_idx ON {{tables.orders}} (announced_at)
    WHERE status = 'pending' OR (status IN ('fulfilled', 'cancelled') AND stock_settled_at IS NULL);
