-- Shared tables (schema public): the service registry every HTTP instance writes to.
CREATE TABLE IF NOT EXISTS {{tables.service_registry}} (
    service       text        NOT NULL,
    instance_id   text        NOT NULL,
    url           text        NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, instance_id)
);
CREATE INDEX IF NOT EXISTS service_registry_heartbeat_idx
    ON {{tables.service_registry}} (service, heartbeat_at);
