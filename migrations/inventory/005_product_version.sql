-- Each change of what orders prices from (name, price, currency, active) counts up a
-- product's version; inventory.product_changed carries it, so orders' read model keeps
-- the newest whatever order the events arrive in.
ALTER TABLE {{tables.products}} ADD COLUMN version bigint NOT NULL DEFAULT 1;
