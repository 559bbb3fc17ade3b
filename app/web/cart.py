"""A user's cart, kept server-side in Redis: one hash per user id, so it survives a reload,
another tab, another device.

Fields ``item:<product id>`` hold quantities; ``checkout`` holds the Idempotency-Key of
the checkout being shown (made when the checkout page is rendered, dropped whenever the
cart changes), so a double click or a reload places the order once. A placed checkout
leaves ``placed:<key>`` -> order id behind for a day: a late second submit of the same
form finds the order instead of an empty cart.
"""
from __future__ import annotations

import os
import threading
import uuid

import redis as redis_lib
from flask import current_app

from infra.errors import Unavailable

CART_SECONDS = 30 * 24 * 3600
PLACED_SECONDS = 24 * 3600
MAX_LINES = 50  # what one order may hold
MAX_QUANTITY = 1000

_client: tuple[int, redis_lib.Redis, object] | None = None  # pid, client, _CHANGE_LINE registered
_lock = threading.Lock()


def redis() -> redis_lib.Redis:
    """This process's Redis client, made on first use (and again in a forked child)."""
    global _client
    with _lock:
        if _client is None or _client[0] != os.getpid():
            url = current_app.extensions["settings"].redis_url
            client = redis_lib.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=1.0,
                                              health_check_interval=30, decode_responses=True)
            _client = (os.getpid(), client, client.register_script(_CHANGE_LINE))
        return _client[1]


def ping() -> None:
    try:
        redis().ping()
    except redis_lib.RedisError:
        raise Unavailable("redis is unavailable") from None


def _key(user_id: str) -> str:
    return f"oms:web:cart:{user_id}"


def lines(user_id: str) -> dict[str, int]:
    """product id -> quantity."""
    stored = redis().hgetall(_key(user_id))
    return {field[5:]: int(value) for field, value in stored.items() if field.startswith("item:")}


# One line changed atomically, the cap checked in the same step: two tabs adding at once
# cannot take a full cart past MAX_LINES. ARGV: field, quantity, "add" or "set", caps, TTL.
_CHANGE_LINE = """
local key, field, quantity, mode = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
local max_lines, max_quantity, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
if redis.call('hexists', key, field) == 0 then
  if quantity <= 0 then return 1 end
  local count = 0
  for _, name in ipairs(redis.call('hkeys', key)) do
    if string.sub(name, 1, 5) == 'item:' then count = count + 1 end
  end
  if count >= max_lines then return 0 end
end
if mode == 'add' then quantity = tonumber(redis.call('hget', key, field) or '0') + quantity end
if quantity <= 0 then
  redis.call('hdel', key, field)
else
  redis.call('hset', key, field, math.min(quantity, max_quantity))
end
redis.call('hdel', key, 'checkout')
redis.call('expire', key, ttl)
return 1
"""


def _change(user_id: str, product_id: str, quantity: int, mode: str) -> None:
    redis()  # this process's client, and the script registered on it (EVALSHA, not the script each time)
    changed = _client[2](keys=[_key(user_id)], args=[f"item:{product_id}", quantity, mode, MAX_LINES, MAX_QUANTITY,
                                                     CART_SECONDS])
    if not changed:
        raise CartFull()


def add(user_id: str, product_id: str, quantity: int) -> None:
    """Add to a line (a new one only while the cart has room: CartFull), at most MAX_QUANTITY."""
    _change(user_id, product_id, quantity, "add")


def set_quantity(user_id: str, product_id: str, quantity: int) -> None:
    """Set a line's quantity (0 removes it; a new line only while the cart has room: CartFull)."""
    _change(user_id, product_id, quantity, "set")


def checkout_key(user_id: str) -> str:
    """The Idempotency-Key of this cart's checkout: made once, kept until the cart changes."""
    key = _key(user_id)
    redis().hsetnx(key, "checkout", str(uuid.uuid4()))
    return redis().hget(key, "checkout")


def current_checkout(user_id: str) -> str | None:
    return redis().hget(_key(user_id), "checkout")


def placed(user_id: str, checkout: str) -> str | None:
    """The order a checkout placed already, if it did."""
    return redis().get(f"{_key(user_id)}:placed:{checkout}")


def mark_placed(user_id: str, checkout: str, order_id: str) -> None:
    """Remember the order and empty the cart, if it is still the cart that was checked out."""
    key = _key(user_id)
    redis().set(f"{key}:placed:{checkout}", order_id, ex=PLACED_SECONDS)
    with redis().pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                if pipe.hget(key, "checkout") != checkout:
                    pipe.unwatch()
                    return  # changed meanwhile (another tab): what was added since stays
                pipe.multi()
                pipe.delete(key)
                pipe.execute()
                return
            except redis_lib.WatchError:
                continue


class CartFull(Exception):
    """A cart holds at most MAX_LINES products, as one order does."""
