"""Who the client is: the socket peer, or, for the hops the operator trusts, the address the
nearest of them saw.

Each proxy appends the address it was reached from to X-Forwarded-For. The client is found
by walking back from the peer while the hop is one of TRUSTED_PROXIES (networks), the way
werkzeug's ProxyFix counts hops but by where a hop is rather than how many there are, so a
request that skips a proxy cannot claim someone else's address. The gateway's console
listener (GATEWAY_CONSOLE_PORT) is one trusted hop more: only the web console calls it, and
it passes on the X-Forwarded-For the gateway gave it, whose last entry is the browser (or
the ingress in front of it). Every rule that keys on the client (rate limits, the ops
allow-list, logs) reads ``request.remote_addr`` after this; the peer stays in
``environ["oms.peer"]`` for the next hop's X-Forwarded-For.
"""
from __future__ import annotations

import ipaddress

PEER = "oms.peer"
UNKNOWN = "unknown"  # a malformed hop: one shared bucket, and no ops path


def ip(text: str | None):
    try:
        address = ipaddress.ip_address((text or "").strip())
    except ValueError:
        return None
    return address.ipv4_mapped or address if address.version == 6 else address


def client_of(peer: str | None, forwarded: str, trusted: tuple, *, peer_trusted: bool = False):
    """The client's address, or None when a hop that must be believed is malformed."""
    address = ip(peer)
    if not peer_trusted and (address is None or not any(address in net for net in trusted)):
        return address
    for hop in reversed([hop for hop in forwarded.split(",") if hop.strip()]):
        address = ip(hop)
        if address is None or not any(address in net for net in trusted):
            return address
    return address


def _local_port(environ) -> int | None:
    sock = environ.get("gunicorn.socket")
    try:
        return sock.getsockname()[1] if sock is not None else None
    except (OSError, IndexError, TypeError):
        return None


class ClientAddress:
    """WSGI middleware: REMOTE_ADDR becomes the client's address (see the module)."""

    def __init__(self, app, *, trusted: tuple, forwarding_port: int | None = None):
        self.app = app
        self.trusted = tuple(trusted)
        self.forwarding_port = forwarding_port

    def __call__(self, environ, start_response):
        peer = environ.get("REMOTE_ADDR")
        peer_trusted = self.forwarding_port is not None and _local_port(environ) == self.forwarding_port
        if peer_trusted or self.trusted:
            forwarded = environ.get("HTTP_X_FORWARDED_FOR", "")
            if forwarded or not peer_trusted:
                client = client_of(peer, forwarded, self.trusted, peer_trusted=peer_trusted)
                if client is None and ip(peer) is not None:
                    client = UNKNOWN
                if client is not None and str(client) != peer:
                    environ[PEER] = peer
                    environ["REMOTE_ADDR"] = str(client)
        return self.app(environ, start_response)


def peer(environ) -> str:
    """The socket peer of this request (what the next hop's X-Forwarded-For ends with)."""
    return environ.get(PEER) or environ.get("REMOTE_ADDR") or ""
