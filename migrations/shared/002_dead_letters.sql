-- Messages whose task gave up (retries exhausted or a permanent error), kept to be
-- inspected and redriven with `python -m app dead-letters list|retry ID|retry --all`.
CREATE TABLE IF NOT EXISTS {{tables.dead_letters}} (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    task_name    text        NOT NULL,
    task_id      text        NULL,
    queue        text        NULL,
    args         jsonb       NOT NULL DEFAULT '[]'::jsonb,
    kwargs       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error        text        NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    redriven_at  timestamptz NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_open_idx ON {{tables.dead_letters}} (created_at) WHERE redriven_at IS NULL;
