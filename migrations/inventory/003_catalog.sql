-- Catalog and stock. available = on_hand - reserved can never go negative: the
-- CHECKs below refuse it even if code forgot a condition.
CREATE TABLE {{tables.products}} (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    sku          text        NOT NULL UNIQUE CHECK (length(sku) BETWEEN 1 AND 64),
    name         text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description  text        NOT NULL DEFAULT '',
    price_cents  bigint      NOT NULL CHECK (price_cents >= 0),
    currency     char(3)     NOT NULL DEFAULT 'USD',
    active       boolean     NOT NULL DEFAULT true,
    on_hand      integer     NOT NULL DEFAULT 0 CHECK (on_hand >= 0),
    reserved     integer     NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT products_available_not_negative CHECK (reserved <= on_hand)
);
CREATE INDEX products_created_idx ON {{tables.products}} (created_at, id);

-- Every change of on_hand, with why and who: the ledger that explains the stock.
CREATE TABLE {{tables.stock_movements}} (
    id          bigserial   PRIMARY KEY,
    product_id  uuid        NOT NULL REFERENCES {{tables.products}} (id),
    delta       integer     NOT NULL CHECK (delta <> 0),
    reason      text        NOT NULL,
    actor       text        NOT NULL,
    order_id    uuid        NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stock_movements_product_idx ON {{tables.stock_movements}} (product_id, created_at);

-- One reservation per order. 'released' with no lines is the tombstone of an
-- order cancelled before its reservation arrived: a late reserve then does nothing.
CREATE TABLE {{tables.reservations}} (
    order_id    uuid        PRIMARY KEY,
    status      text        NOT NULL CHECK (status IN ('held', 'committed', 'released')),
    reason      text        NULL,
    expires_at  timestamptz NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_held_idx ON {{tables.reservations}} (expires_at) WHERE status = 'held';

CREATE TABLE {{tables.reservation_lines}} (
    order_id    uuid    NOT NULL REFERENCES {{tables.reservations}} (order_id),
    product_id  uuid    NOT NULL REFERENCES {{tables.products}} (id),
    quantity    integer NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);
