"""Login throttling in Redis: a delay per (account, client) and a ceiling per account.

Every attempt is counted before its password is checked, in one script that also refuses
it while it must wait, so a burst of parallel guesses gets no more checks than the
thresholds. Per (account, client): from ``threshold`` failures on, each counted attempt
locks that client out of that account for a delay that doubles per further failure, up to
a cap; a successful login clears it. Per account, across clients: from
``account_threshold`` failures on (a spraying run from many addresses), every further
failure locks the account for ``account_delay`` seconds, never longer, for every client
but those the account has logged in from before (kept ``known_seconds``), so nobody can
keep the owner out of an account for more than ``account_delay`` at a time, and the owner at
a known address not at all. Failures are forgotten ``window`` seconds after the last one.
An account is its user id, or the normalised email when no account has it, so an unknown
email is throttled like a known one and the answer says nothing about which. Clients and
emails are hashed: the keys name no one.
"""
from __future__ import annotations

import hashlib
import logging
import math

import redis

from infra import runtime
from infra.errors import Unavailable
from services.users.errors import LoginThrottled

logger = logging.getLogger(__name__)

# KEYS: client failures, client lock, account failures, account lock, known clients.
# ARGV: threshold, first delay, max delay, window, account threshold, account delay, client.
# Returns the milliseconds left on a lock (refused), or 0 (admitted and counted).
_ADMIT = """
local left = redis.call('PTTL', KEYS[2])
if left > 0 then return left end
if redis.call('HEXISTS', KEYS[5], ARGV[7]) == 0 then
    left = redis.call('PTTL', KEYS[4])
    if left > 0 then return left end
end
local failures = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local threshold = tonumber(ARGV[1])
if failures >= threshold then
    local delay = math.min(tonumber(ARGV[2]) * 2 ^ (failures - threshold), tonumber(ARGV[3]))
    redis.call('SET', KEYS[2], '1', 'EX', math.floor(delay))
end
local account = redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], ARGV[4])
if account >= tonumber(ARGV[5]) then
    redis.call('SET', KEYS[4], '1', 'EX', ARGV[6], 'NX')
end
return 0
"""

# KEYS: client failures, client lock, account failures, known clients. ARGV: client, known seconds.
_SUCCEEDED = """
redis.call('DEL', KEYS[1], KEYS[2])
if tonumber(redis.call('GET', KEYS[3]) or '0') > 0 then redis.call('DECR', KEYS[3]) end
redis.call('HSET', KEYS[4], ARGV[1], '1')
redis.call('EXPIRE', KEYS[4], ARGV[2])
return 0
"""


def delay_after(*, failures: int, threshold: int, delay: int, max_delay: int) -> int:
    """Seconds a client waits after ``failures`` counted failures for one account (the script's schedule)."""
    if failures < threshold:
        return 0
    return min(delay * 2 ** (failures - threshold), max_delay)


def account_key(*, user_id=None, email: str = "") -> str:
    if user_id is not None:
        return f"user:{user_id}"
    # Hashed: the key names no one in Redis (or in a dump of it).
    return "email:" + hashlib.sha256(email.lower().encode()).hexdigest()[:32]


def client_key(address: str | None) -> str:
    return hashlib.sha256((address or "unknown").encode()).hexdigest()[:24]


class LoginThrottle:
    def __init__(self, client: redis.Redis, *, threshold: int, delay: int, max_delay: int, window: int,
                 fail_open: bool, account_threshold: int = 20, account_delay: int = 60,
                 known_seconds: int = 30 * 86400):
        self.redis = client
        self.policy = [threshold, delay, max_delay, max(window, max_delay), account_threshold, account_delay]
        self.known_seconds = known_seconds
        self.fail_open = fail_open
        self._admit = client.register_script(_ADMIT)
        self._succeeded = client.register_script(_SUCCEEDED)

    def admit(self, *, account: str, client: str | None = None) -> None:
        """Count an attempt on ``account`` from ``client`` (an address), or raise LoginThrottled
        while that client, or the account for clients it does not know, must wait."""
        who = client_key(client)
        left_ms = self._do(self._admit, keys=self._keys(account, who), args=[*self.policy, who])
        if left_ms and int(left_ms) > 0:
            raise LoginThrottled(
                "too many failed logins for this account; retry after the number of seconds in Retry-After",
                retry_after=math.ceil(int(left_ms) / 1000),
            )

    def succeeded(self, *, account: str, client: str | None = None) -> None:
        """A login that worked: the client's count starts again and the account knows the client."""
        who = client_key(client)
        failures, lock, account_failures, _, known = self._keys(account, who)
        self._do(self._succeeded, keys=[failures, lock, account_failures, known], args=[who, self.known_seconds])

    @staticmethod
    def _keys(account: str, who: str) -> list[str]:
        return [f"login-failures:{account}:{who}", f"login-locked:{account}:{who}",
                f"login-failures:{account}", f"login-locked:{account}", f"login-known:{account}"]

    def _do(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.RedisError:
            if self.fail_open:
                # The same rule as token revocation (AUTH_REVOCATION_FAIL_OPEN): development
                # keeps working without Redis; elsewhere a login is refused rather than unthrottled.
                logger.warning("login throttle store unavailable; attempt not counted")
                return None
            raise Unavailable("login is unavailable, retry later") from None


def throttle() -> LoginThrottle:
    """The login throttle of this process (its Redis client, its policy)."""
    rt = runtime.get()
    s = rt.settings
    return LoginThrottle(rt.redis, threshold=s.login_failures_before_delay, delay=s.login_delay_seconds,
                         max_delay=s.login_delay_max_seconds, window=s.login_failure_window_seconds,
                         fail_open=s.auth_revocation_fail_open, account_threshold=s.login_account_failures_max,
                         account_delay=s.login_account_delay_seconds, known_seconds=s.session_max_age_seconds)
