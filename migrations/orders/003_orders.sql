CREATE TABLE {{tables.orders}} (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          uuid        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'reserved', 'fulfilled', 'rejected', 'cancelled')),
    reason           text        NULL
                     CHECK (reason IS NULL OR reason IN ('out_of_stock', 'product_unavailable', 'customer', 'expired')),
    total_cents      bigint      NOT NULL CHECK (total_cents >= 0),
    currency         char(3)     NOT NULL,
    idempotency_key  text        NULL,
    request_hash     text        NULL,
    reserved_at      timestamptz NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orders_idempotency_key UNIQUE (user_id, idempotency_key)
);
CREATE INDEX orders_user_created_idx ON {{tables.orders}} (user_id, created_at DESC, id DESC);
CREATE INDEX orders_reserved_idx ON {{tables.orders}} (reserved_at) WHERE status = 'reserved';

CREATE TABLE {{tables.order_lines}} (
    order_id          uuid    NOT NULL REFERENCES {{tables.orders}} (id),
    line_no           integer NOT NULL,
    product_id        uuid    NOT NULL,
    product_name      text    NOT NULL DEFAULT '',
    quantity          integer NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
    unit_price_cents  bigint  NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, line_no),
    UNIQUE (order_id, product_id)
);

CREATE TABLE {{tables.order_history}} (
    order_id  uuid        NOT NULL REFERENCES {{tables.orders}} (id),
    seq       bigserial,
    status    text        NOT NULL,
    reason    text        NULL,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (order_id, seq)
);

-- Legal transitions only, whatever the code does: pending -> reserved -> fulfilled,
-- pending -> rejected, pending|reserved -> cancelled. Every status is recorded in history.
CREATE FUNCTION {{schema}}.orders_guard_transition() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> 'pending' THEN
            RAISE EXCEPTION 'an order starts pending, not %', NEW.status USING ERRCODE = 'check_violation';
        END IF;
    ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
        IF NOT ((OLD.status = 'pending' AND NEW.status IN ('reserved', 'rejected', 'cancelled'))
             OR (OLD.status = 'reserved' AND NEW.status IN ('fulfilled', 'cancelled'))) THEN
            RAISE EXCEPTION 'illegal order transition % -> %', OLD.status, NEW.status
                USING ERRCODE = 'check_violation';
        END IF;
    ELSE
        RETURN NEW;
    END IF;
    INSERT INTO {{tables.order_history}} (order_id, status, reason) VALUES (NEW.id, NEW.status, NEW.reason);
    RETURN NEW;
END;
$$;

CREATE TRIGGER orders_guard_transition
    AFTER INSERT OR UPDATE OF status ON {{tables.orders}}
    FOR EACH ROW EXECUTE FUNCTION {{schema}}.orders_guard_transition();
