-- Orders' read model of inventory's catalog: what placement prices from, without asking
-- inventory. Fed by inventory.product_changed (newest version wins); inventory stays the
-- authority, refusing at reservation a product that is unknown or inactive.
CREATE TABLE {{tables.catalog}} (
    product_id   uuid        PRIMARY KEY,
    sku          text        NOT NULL,
    name         text        NOT NULL,
    price_cents  bigint      NOT NULL,
    currency     char(3)     NOT NULL,
    active       boolean     NOT NULL,
    version      bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Admission control reads the age of the oldest order not yet reserved.
CREATE INDEX orders_pending_created_idx ON {{tables.orders}} (created_at) WHERE status = 'pending';
