-- Whom to notify: kept from user.registered / user.updated, never read from users' tables.
CREATE TABLE {{tables.recipients}} (
    user_id     uuid        PRIMARY KEY,
    email       text        NOT NULL,
    name        text        NOT NULL,
    phone       text        NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per event, channel and recipient; a redelivered event cannot make a second.
CREATE TABLE {{tables.notifications}} (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid        NOT NULL,
    event_id    uuid        NOT NULL,
    channel     text        NOT NULL CHECK (channel IN ('email', 'sms')),
    template    text        NOT NULL,
    recipient   text        NOT NULL,
    subject     text        NULL,
    body_text   text        NOT NULL,
    body_html   text        NULL,
    status      text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts    integer     NOT NULL DEFAULT 0,
    last_error  text        NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz NULL,
    UNIQUE (event_id, channel, recipient)
);
CREATE INDEX notifications_user_created_idx ON {{tables.notifications}} (user_id, created_at DESC, id DESC);
CREATE INDEX notifications_pending_idx ON {{tables.notifications}} (event_id) WHERE status = 'pending';

-- Every delivery attempt, for the status history of a notification.
CREATE TABLE {{tables.delivery_attempts}} (
    notification_id  uuid        NOT NULL REFERENCES {{tables.notifications}} (id),
    attempt          integer     NOT NULL,
    outcome          text        NOT NULL CHECK (outcome IN ('sent', 'retry', 'failed')),
    error            text        NULL,
    at               timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (notification_id, attempt)
);
