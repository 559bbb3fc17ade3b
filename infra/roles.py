"""Database roles: who each process logs in as, and what each role may touch.

One role per domain schema (``<prefix>users``, ``<prefix>orders``, ...) may use only
its own schema; ``<prefix>gateway`` reads the service registry and counts dead
letters; ``<prefix>worker`` (NOINHERIT) may only record and redrive dead letters by
itself and is a member of every domain role, which it takes on with ``SET LOCAL
ROLE`` inside a domain's transactions (infra/db.py). The prefix is the database's
name and ``_`` unless ``DB_ROLE_PREFIX`` says otherwise, so databases sharing a server
(tests, CI) never share roles. ``python -m app migrate`` creates the roles and
re-applies every grant at the end of each run (``apply``).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from typing import Mapping
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg

from config.settings import SCHEMAS, ConfigError, Settings

OWNER = "owner"  # the URL's own user: migrations only
GATEWAY = "gateway"
WORKER = "worker"  # several domains over one pool: Celery workers, the CLI, the test process
LOGINS = (*SCHEMAS, GATEWAY, WORKER)  # every role migrations create (each may log in)
REGISTRY_WRITERS = (*SCHEMAS, GATEWAY)  # HTTP processes: each keeps its own registry rows
MAX_NAME = 63  # PostgreSQL truncates longer identifiers
_NOT_IN_URL = re.compile(r"^(user|password)=", re.I)


@dataclass(frozen=True)
class Login:
    """How a process connects: its URL, and the role to act as per schema (when not its login)."""

    dsn: str
    user: str | None  # None: whoever the URL names (the owner)
    switch: dict[str, str] = field(default_factory=dict)


def names(prefix: str) -> dict[str, str]:
    """Every role of one database, by what it is for."""
    roles = {key: prefix + key for key in LOGINS}
    longest = max(roles.values(), key=len)
    if len(longest.encode()) > MAX_NAME:
        raise ConfigError(
            f"configuration error: role name {longest!r} is longer than {MAX_NAME} bytes; "
            "set a shorter DB_ROLE_PREFIX"
        )
    return roles


def login(settings: Settings, kind: str) -> Login:
    """The login of a process of ``kind``: OWNER, GATEWAY, WORKER or a domain."""
    if kind == OWNER:
        return Login(dsn=settings.database_url, user=None)
    if kind not in LOGINS:
        raise ValueError(f"no database role for {kind!r}")
    roles = names(settings.role_prefix)
    switch = {schema: roles[schema] for schema in SCHEMAS} if kind == WORKER else {}
    password = settings.db_role_passwords.get(kind)
    return Login(dsn=login_url(settings.database_url, roles[kind], str(password) if password else None),
                 user=roles[kind], switch=switch)


def login_url(url: str, role: str, password: str | None = None) -> str:
    """``url`` as ``role``: as given when it names ``role`` (with its password), else its
    server, database and options with ``role`` as user and ``password`` (DB_PASSWORD_<ROLE>),
    never the password ``url`` carries.

    The second case is DATABASE_URL naming the owner: without a password it suits servers
    that trust local logins (embedded ``make run``, tests, CI) or a password file
    (~/.pgpass); in production give each process a URL of its own instead.
    """
    parts = urlsplit(url)
    if parts.username is not None and unquote(parts.username) == role:
        return url
    server = parts.netloc.rpartition("@")[2]
    user = quote(role, safe="") + (":" + quote(password, safe="") if password else "")
    query = "&".join(p for p in parts.query.split("&") if p and not _NOT_IN_URL.match(p))
    return urlunsplit(parts._replace(netloc=f"{user}@{server}", query=query))


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """What PostgreSQL stores for a SCRAM-SHA-256 password (RFC 5803), as psql's \\password sends it."""
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored)}:{_b64(server)}"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# -- what migrate applies, as the owner ---------------------------------------------------
async def apply(conn, prefix: str, passwords: Mapping[str, str] | None = None) -> None:
    """Create the roles if missing and set every grant and registry policy, in one transaction.

    ``passwords`` (DB_PASSWORD_<ROLE>, by role) are set when given, hashed here so no
    clear password reaches the server or its logs; roles without one keep theirs.

    Grants are re-applied on every run instead of ALTER DEFAULT PRIVILEGES: a table a
    later migration adds is granted by that same run whoever the owner is, and revoking
    first makes the result exactly what this function says, whatever was granted before.
    Runs under migrate's whole-run lock; idempotent.
    """
    roles = names(prefix)
    domains = [ident(roles[s]) for s in SCHEMAS]
    everyone = ", ".join(ident(r) for r in roles.values())
    async with conn.transaction():
        for key, role in roles.items():
            await _ensure_role(conn, role, inherit=key != WORKER)
            if passwords and passwords.get(key):
                await conn.execute(f"ALTER ROLE {ident(role)} PASSWORD {_literal(scram_verifier(passwords[key]))}")
        membership = "WITH INHERIT FALSE, SET TRUE" if conn.get_server_version().major >= 16 else ""
        statements = [f"GRANT {', '.join(domains)} TO {ident(roles[WORKER])} {membership}",
                      # PostgreSQL before 15 lets everyone create tables in public.
                      "REVOKE CREATE ON SCHEMA public FROM PUBLIC"]
        for schema in SCHEMAS:
            own = ident(roles[schema])
            statements += [
                f"REVOKE ALL ON SCHEMA {ident(schema)} FROM {everyone}",
                f"REVOKE ALL ON ALL TABLES IN SCHEMA {ident(schema)} FROM {everyone}",
                f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {ident(schema)} FROM {everyone}",
                f"GRANT USAGE ON SCHEMA {ident(schema)} TO {own}",
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {ident(schema)} TO {own}",
                f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {ident(schema)} TO {own}",
                # pgdbm's bookkeeping of applied files is the owner's alone.
                f"REVOKE ALL ON {ident(schema)}.schema_migrations FROM {own}",
            ]
        writers = ", ".join(ident(roles[k]) for k in REGISTRY_WRITERS)
        statements += [
            f"REVOKE ALL ON public.service_registry, public.dead_letters, public.schema_migrations FROM {everyone}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON public.service_registry TO {writers}",
            # /metrics counts them; what a dead letter carries (ids, addresses) stays unread.
            f"GRANT SELECT (id, redriven_at) ON public.dead_letters TO {ident(roles[GATEWAY])}",
            f"GRANT SELECT, INSERT, UPDATE (redriven_at) ON public.dead_letters TO {ident(roles[WORKER])}",
        ]
        await conn.execute(";\n".join(statements))
        await _registry_policies(conn, roles)


async def _ensure_role(conn, role: str, *, inherit: bool) -> None:
    row = await conn.fetchrow(
        "SELECT rolsuper OR rolbypassrls OR rolcreaterole OR rolcreatedb OR rolreplication AS powerful "
        "FROM pg_roles WHERE rolname = $1", role)
    options = "LOGIN " + ("INHERIT" if inherit else "NOINHERIT")
    if row is None:
        try:
            async with conn.transaction():
                await conn.execute(f"CREATE ROLE {ident(role)} {options}")
            return
        except (asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
            pass  # made meanwhile by the migrate of another database sharing DB_ROLE_PREFIX
    elif row["powerful"]:
        # Only a superuser may take these away: anyone else's migrate stops here, loudly.
        await conn.execute(f"ALTER ROLE {ident(role)} NOSUPERUSER NOBYPASSRLS NOCREATEROLE NOCREATEDB "
                           "NOREPLICATION")
    await conn.execute(f"ALTER ROLE {ident(role)} {options}")


async def _registry_policies(conn, roles: dict[str, str]) -> None:
    """Row-level security on the registry: each HTTP process keeps its own service's rows.

    Changed only when they differ from what is wanted: CREATE POLICY takes the table's
    strongest lock, which every heartbeat would queue behind.
    """
    wanted = {f"registry_own_{key}": ("ALL", roles[key], f"service = {_literal(key)}", True)
              for key in REGISTRY_WRITERS}
    wanted["registry_read_gateway"] = ("SELECT", roles[GATEWAY], "true", False)
    have = await conn.fetch(
        "SELECT policyname, cmd, roles::text[] AS roles FROM pg_policies "
        "WHERE schemaname = 'public' AND tablename = 'service_registry'")
    enabled = await conn.fetchval("SELECT relrowsecurity FROM pg_class WHERE oid = 'public.service_registry'::regclass")
    if enabled and {(r["policyname"], r["cmd"], tuple(r["roles"])) for r in have} == {
        (name, cmd, (role,)) for name, (cmd, role, _, _) in wanted.items()
    }:
        return
    statements = [f"DROP POLICY {ident(r['policyname'])} ON public.service_registry" for r in have]
    for name, (cmd, role, rows, check) in wanted.items():
        statements.append(f"CREATE POLICY {ident(name)} ON public.service_registry FOR {cmd} TO {ident(role)} "
                          f"USING ({rows})" + (f" WITH CHECK ({rows})" if check else ""))
    statements.append("ALTER TABLE public.service_registry ENABLE ROW LEVEL SECURITY")
    await conn.execute(";\n".join(statements))


async def drop(conn, prefix: str) -> None:
    """Drop the roles of a database that is gone (tests' throwaway databases)."""
    for role in names(prefix).values():
        await conn.execute(f"DROP ROLE IF EXISTS {ident(role)}")
