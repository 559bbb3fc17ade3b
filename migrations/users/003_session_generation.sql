-- Raised whenever every session of the user must end (logout-all, a password or role
-- change); a refresh token of an older generation is refused. Redis mirrors it for
-- the access-token check (services/users/sessions.py).
ALTER TABLE {{tables.users}} ADD COLUMN session_generation integer NOT NULL DEFAULT 0;
