"""Login throttling per account, in Redis, whatever address the attempts come from.

Every attempt is counted before its password is checked, in one script that also
refuses it while the account is locked, so a burst of parallel guesses gets no more
checks than the threshold. From the threshold on, each counted attempt locks the
account for a delay that doubles per further failure, up to a cap; a successful
login clears both keys. Failures are forgotten ``window`` seconds after the last one.
An account is its user id, or the normalised email when no account has it, so an
unknown email is throttled like a known one and the answer says nothing about which.
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

# KEYS: failures counter, lock. ARGV: threshold, first delay, max delay, window (seconds).
# Returns the milliseconds left on the lock (refused), or 0 (admitted and counted).
_ADMIT = """
local left = redis.call('PTTL', KEYS[2])
if left > 0 then return left end
local failures = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
local threshold = tonumber(ARGV[1])
if failures >= threshold then
    local delay = math.min(tonumber(ARGV[2]) * 2 ^ (failures - threshold), tonumber(ARGV[3]))
    redis.call('SET', KEYS[2], '1', 'EX', math.floor(delay))
end
return 0
"""


def delay_after(*, failures: int, threshold: int, delay: int, max_delay: int) -> int:
    """Seconds an account waits after ``failures`` counted failures (the script's schedule)."""
    if failures < threshold:
        return 0
    return min(delay * 2 ** (failures - threshold), max_delay)


def account_key(*, user_id=None, email: str = "") -> str:
    if user_id is not None:
        return f"user:{user_id}"
    # Hashed: the key names no one in Redis (or in a dump of it).
    return "email:" + hashlib.sha256(email.lower().encode()).hexdigest()[:32]


class LoginThrottle:
    def __init__(self, client: redis.Redis, *, threshold: int, delay: int, max_delay: int, window: int,
                 fail_open: bool):
        self.redis = client
        self.policy = [threshold, delay, max_delay, max(window, max_delay)]
        self.fail_open = fail_open
        self._admit = client.register_script(_ADMIT)

    def admit(self, *, account: str) -> None:
        """Count an attempt for ``account``, or raise LoginThrottled while it must wait."""
        left_ms = self._do(self._admit, keys=self._keys(account), args=self.policy)
        if left_ms and int(left_ms) > 0:
            raise LoginThrottled(
                "too many failed logins for this account; retry after the number of seconds in Retry-After",
                retry_after=math.ceil(int(left_ms) / 1000),
            )

    def succeeded(self, *, account: str) -> None:
        self._do(self.redis.delete, *self._keys(account))

    @staticmethod
    def _keys(account: str) -> list[str]:
        return [f"login-failures:{account}", f"login-locked:{account}"]

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
                         fail_open=s.auth_revocation_fail_open)
