-- The admins' order search (GET /api/orders/search): newest first over every customer,
-- alone or by status (a reason narrows a status: it belongs to rejected or cancelled).
CREATE INDEX orders_created_idx ON {{tables.orders}} (created_at DESC, id DESC);
CREATE INDEX orders_status_created_idx ON {{tables.orders}} (status, created_at DESC, id DESC);

-- Who placed an order, as users' events tell it (user.registered, user.updated): what the
-- search finds a customer's orders by, without asking the users domain (its own schema).
-- Email is kept lower-cased: users treats addresses case-insensitively.
CREATE TABLE {{tables.customers}} (
    user_id     uuid        PRIMARY KEY,
    email       text        NOT NULL,
    updated_at  timestamptz NOT NULL
);
CREATE INDEX customers_email_idx ON {{tables.customers}} (email);
