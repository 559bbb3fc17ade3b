"""PostgreSQL URLs as libpq reads them: TCP (``postgresql://u@host:5432/db``) and unix
socket (``postgresql://u@/db?host=/run/postgresql``, the embedded server's form) alike.

A URL's last ``/`` is not its database: a socket folder in ``?host=`` has slashes too.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit


@dataclass(frozen=True)
class Address:
    host: str  # a host name or address, or a unix socket folder (starts with "/")
    port: int
    database: str
    user: str

    @property
    def unix_socket(self) -> bool:
        return self.host.startswith("/")


def address(url: str) -> Address:
    """Where ``url`` connects, with libpq's defaults: ``?host=``/``?port=``/``?dbname=``/
    ``?user=`` win over the URL's parts, the database defaults to the user's name."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    user = query.get("user") or (unquote(parts.username) if parts.username else "") or "postgres"
    host = query.get("host") or (unquote(parts.hostname) if parts.hostname else "") or "127.0.0.1"
    port = int(query.get("port") or parts.port or 5432)
    database = query.get("dbname") or unquote(parts.path.lstrip("/")) or user
    return Address(host=host, port=port, database=database, user=user)


def database_name(url: str) -> str:
    """The database ``url`` connects to."""
    return address(url).database


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead (server, user and options kept)."""
    parts = urlsplit(url)
    query = "&".join(p for p in parts.query.split("&") if p and not p.startswith("dbname="))
    return urlunsplit(parts._replace(path="/" + name, query=query))
