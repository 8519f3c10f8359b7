"""The shared state of many machines: the verbs of shared.py as Lua scripts on one Redis server.

Each verb that must be atomic is one script, sent by EVALSHA (loaded again when the server answers
NOSCRIPT, as after a restart), reading the server's clock (`TIME`) so that machines whose clocks disagree
still agree on windows and deadlines. Times cross the wire as durations: the caller's deadline becomes
"so many seconds from the server's now", and the server's answers come back as the caller's wall time.

Keys: `<prefix>{<tag>}:<space>`, where the tag is the account key (or the counter's or cursor's own key),
so that everything one script touches hashes to one Redis Cluster slot. What is stored: account and
model names, counts, levels, times and hold reasons (scrubbed of anything key-shaped); never an API key.

redis-py (the `nbrouter[redis]` extra) is imported only when a store is made.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import weakref
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from ..._core import Clock, scrub_pieces
from ..._core.clock import SYSTEM_CLOCK
from ..errors import ComboConfigError
from .health import Hold, HoldKind
from .shared import (
    SLICES,
    AddCount,
    AdjustBucket,
    Admission,
    AdmitRequest,
    BreakerSuccess,
    BreakerView,
    BucketSpec,
    EmptyBuckets,
    ExtendHold,
    LowerBucket,
    ReleaseSlot,
    SlotRequest,
    StoreDown,
    Window,
    Write,
    new_token,
    shuffled,
    tag_of,
)

__all__ = ["DEFAULT_PREFIX", "DEFAULT_TIMEOUT_S", "SCRIPTS", "RedisShared", "RedisURL", "parse_redis_url", "redact_url"]

DEFAULT_PREFIX = "nbrouter:"
#: how long a verb may wait for the server (connect, send, answer) before the store counts as down
DEFAULT_TIMEOUT_S = 0.25
#: a bucket, breaker or slot key unused this long goes (a full bucket is as good as a new one)
_IDLE_TTL_MS = 2 * 86400 * 1000


# ---- the URL ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisURL:
    """A parsed `redis://` or `rediss://` (TLS) URL."""

    tls: bool
    host: str
    port: int
    db: int
    username: str | None
    password: str | None

    @property
    def shown(self) -> str:
        """The URL as messages show it: the password replaced by `***`."""
        auth = ""
        if self.username or self.password:
            auth = (quote(self.username, safe="") if self.username else "") + (":***" if self.password else "") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{auth}{host}:{self.port}/{self.db}"


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***` (for messages), whatever else is wrong with it."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.netloc.rsplit("@", 1)[1]
        return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))
    except ValueError:
        head, sep, tail = url.partition("@")
        if not sep:
            return url
        scheme, _, _ = head.partition("://")
        return f"{scheme}://***@{tail}"


def parse_redis_url(url: str, *, where: str = "the state URL", file: str | None = None) -> RedisURL:
    """Check and parse a Redis URL; a malformed one is a ComboConfigError naming it without its password.

    Args:
        url: `redis://[user[:password]@]host[:port][/db]` or `rediss://...` for TLS.
        where: what the URL came from, for the message (`NBROUTER_STATE_URL`, the file's `[state] url`).
        file: the config file it came from, named in the error.
    """
    shown = redact_url(url)

    def bad(why: str) -> ComboConfigError:
        return ComboConfigError(f"{where} {shown!r} is not a Redis URL: {why}", file=file, field="state.url")

    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise bad(str(exc)) from None
    if parts.scheme not in ("redis", "rediss"):
        raise bad(f"unknown scheme {parts.scheme!r} (use redis:// or rediss:// for TLS)" if parts.scheme
                  else "no scheme (use redis://host:6379/0)")
    if not parts.hostname:
        raise bad("no host")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise bad(f"the database must be a number, not {path!r}")
    if parts.query or parts.fragment:
        raise bad("options after '?' or '#' are not supported")
    return RedisURL(tls=parts.scheme == "rediss", host=parts.hostname, port=port or 6379, db=int(path or 0),
                    username=unquote(parts.username) if parts.username else None,
                    password=unquote(parts.password) if parts.password is not None else None)


# ---- the scripts -------------------------------------------------------------------------------------

# every script starts with this: the server's now (ARGV[1] shifts it, for tests that turn time by hand),
# exact number formatting (Lua's tostring keeps 14 digits, too few for epoch seconds), and the parts that
# several scripts share (holds, breakers, buckets, slots)
_PRELUDE = r"""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[1])
local function f(x) return string.format('%.17g', x) end
local IDLE = tonumber(ARGV[2])

local function live_hold(hkey, field)
  local v = redis.call('HGET', hkey, field)
  if not v then return nil end
  local h = cjson.decode(v)
  if tonumber(h[2]) > now then return v end
  return nil
end

local function breaker_load(bkey, field)
  local v = redis.call('HGET', bkey, field)
  local b = {open = false, open_until = 0, mult = 1, probe_until = 0, failures = {}}
  if v then
    local parts = {}
    for p in string.gmatch(v, '%S+') do parts[#parts + 1] = p end
    b.open = parts[1] == '1'
    b.open_until = tonumber(parts[2])
    b.mult = tonumber(parts[3])
    b.probe_until = tonumber(parts[4])
    for i = 5, #parts do b.failures[#b.failures + 1] = tonumber(parts[i]) end
  end
  return b
end

local function breaker_save(bkey, field, b)
  local parts = {b.open and '1' or '0', f(b.open_until), f(b.mult), f(b.probe_until)}
  for _, x in ipairs(b.failures) do parts[#parts + 1] = f(x) end
  redis.call('HSET', bkey, field, table.concat(parts, ' '))
  redis.call('PEXPIRE', bkey, IDLE)
end

-- 'closed' | 'open' | 'half_open', and whether a probe is out
local function breaker_view(b)
  if not b.open then return 'closed', false end
  if now < b.open_until then return 'open', false end
  return 'half_open', now < b.probe_until
end

-- {level, stamp, blocked} refilled to now; a bucket not kept yet starts at initial, with a 4th item (new)
local function bucket_level(kkey, field, rate, cap, initial)
  local v = redis.call('HGET', kkey, field)
  if not v then return {math.min(initial, cap), now, 0, 1} end
  local l, s, bl = string.match(v, '(%S+) (%S+) (%S+)')
  l = tonumber(l); s = tonumber(s); bl = tonumber(bl)
  if now > s then
    l = math.min(cap, l + (now - s) * rate)
    s = now
  end
  return {l, s, bl}
end

local function bucket_save(kkey, field, b)
  redis.call('HSET', kkey, field, f(b[1]) .. ' ' .. f(b[2]) .. ' ' .. f(b[3]))
  redis.call('PEXPIRE', kkey, IDLE)
end

local function slot_take(skey, limit, ttl, token)
  redis.call('ZREMRANGEBYSCORE', skey, '-inf', f(now))
  if redis.call('ZCARD', skey) >= limit then return false end
  redis.call('ZADD', skey, f(now + ttl), token)
  redis.call('PEXPIRE', skey, math.ceil(ttl * 1000) + 1000)
  return true
end
"""

# KEYS[1] the counter's hash (one field per slot); ARGV[3] n, [4] window seconds or 'inf', [5] sliding,
# [6] slices, [7] '1' to add (else only read). Returns the window's total.
_COUNT = r"""
local w = ARGV[4]
local cur, first, ttl = 0, 0, nil
if w ~= 'inf' then
  local ws = tonumber(w)
  local sliding = ARGV[5] == '1'
  local s = ws
  if sliding then s = ws / tonumber(ARGV[6]) end
  cur = math.floor(now / s)
  first = cur
  if sliding then first = cur - tonumber(ARGV[6]) end
  ttl = (cur + 1) * s - now
  if sliding then ttl = ttl + ws end
end
local field = string.format('%d', cur)
if ARGV[7] == '1' then
  redis.call('HINCRBYFLOAT', KEYS[1], field, ARGV[3])
  if ttl then redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000)) end
end
local total = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local slot = tonumber(all[i])
  if slot < first then
    redis.call('HDEL', KEYS[1], all[i])
  elseif slot <= cur then
    total = total + tonumber(all[i + 1])
  end
end
return f(total)
"""

# KEYS[1] the account's holds; ARGV[3] the held key, [4] kind, [5] seconds from now, [6] reason, [7] detail.
# Returns {the hold in force (JSON), now}.
_HOLD = r"""
local untl = now + tonumber(ARGV[5])
local old = live_hold(KEYS[1], ARGV[3])
if old then
  local h = cjson.decode(old)
  if tonumber(h[2]) >= untl then return {old, f(now)} end
end
local v = cjson.encode({ARGV[4], f(untl), ARGV[6], ARGV[7], f(now)})
redis.call('HSET', KEYS[1], ARGV[3], v)
local want = math.ceil((untl - now) * 1000) + 1000
local pttl = redis.call('PTTL', KEYS[1])
if pttl < want then redis.call('PEXPIRE', KEYS[1], want) end
return {v, f(now)}
"""

# KEYS[1] the account's holds; ARGV[3] '1' to clear those whose key contains ARGV[4] ('' = all), else read.
# Returns {now, count, key, value, key, value...} (the live holds; for a clear, the count removed).
_HOLDS = r"""
local out = {f(now), 0}
local all = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #all, 2 do
  local h = cjson.decode(all[i + 1])
  local live = tonumber(h[2]) > now
  if ARGV[3] == '1' then
    if ARGV[4] == '' or string.find(all[i], ARGV[4], 1, true) then
      redis.call('HDEL', KEYS[1], all[i])
      if live then n = n + 1 end
    end
  elseif live then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
out[2] = n
return out
"""

# KEYS[1] the account's breakers; ARGV[3] op (fail | admit | success | end | read), [4] the candidate key,
# [5] window seconds, [6] threshold, [7] open seconds, [8] open now, [9] probe ttl.
# Returns {admitted, state, open_until, failures, probing, now}.
_BREAKER = r"""
local op, field = ARGV[3], ARGV[4]
local b = breaker_load(KEYS[1], field)
local admitted = 0
if op == 'fail' then
  local window, threshold, open_s = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local kept = {}
  for _, x in ipairs(b.failures) do if x > now - window then kept[#kept + 1] = x end end
  kept[#kept + 1] = now
  local probing = b.open and now >= b.open_until
  local count = #kept
  local keep = math.max(threshold, 1)
  local trimmed = {}
  for i = math.max(1, #kept - keep + 1), #kept do trimmed[#trimmed + 1] = kept[i] end
  b.failures = trimmed
  if probing then b.mult = math.min(b.mult * 2, 64) end
  if probing or ARGV[8] == '1' or ((not b.open) and count >= threshold) then
    b.open = true
    b.open_until = now + open_s * b.mult
    b.probe_until = 0
  end
  breaker_save(KEYS[1], field, b)
elseif op == 'admit' then
  local state, probing = breaker_view(b)
  if state == 'closed' then
    admitted = 1
  elseif state == 'half_open' and not probing then
    b.probe_until = now + tonumber(ARGV[9])
    breaker_save(KEYS[1], field, b)
    admitted = 1
  end
elseif op == 'success' then
  redis.call('HDEL', KEYS[1], field)
  b = breaker_load(KEYS[1], field)
elseif op == 'end' then
  if redis.call('HEXISTS', KEYS[1], field) == 1 then
    b.probe_until = 0
    breaker_save(KEYS[1], field, b)
  end
end
local state, probing = breaker_view(b)
local open_until = 0
if b.open then open_until = b.open_until end
return {admitted, state, f(open_until), #b.failures, probing and 1 or 0, f(now)}
"""

# KEYS[1] the deck, [2] its size; ARGV[3] n, [4...] a fresh shuffled deck. Returns the card.
_DEAL = r"""
if redis.call('GET', KEYS[2]) ~= ARGV[3] or redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('RPUSH', KEYS[1], unpack(ARGV, 4))
  redis.call('SET', KEYS[2], ARGV[3])
end
return tonumber(redis.call('LPOP', KEYS[1]))
"""

# KEYS[1] the use counts; ARGV[3...] the members. Returns the member taken.
_LEAST = r"""
local best, fewest = nil, nil
for i = 3, #ARGV do
  local n = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if fewest == nil or n < fewest then best, fewest = ARGV[i], n end
end
redis.call('HINCRBY', KEYS[1], best, 1)
return best
"""

# KEYS[1] holds, [2] breakers, [3] buckets, [4] slots; ARGV[3] the request (JSON), [4] a slot token.
# Returns {admitted, wait, reason, hold JSON, bucket, slot, probe, now}.
_ADMIT = r"""
local r = cjson.decode(ARGV[3])
for _, key in ipairs(r.holds) do
  local v = live_hold(KEYS[1], key)
  if v then
    local h = cjson.decode(v)
    return {0, f(tonumber(h[2]) - now), 'held', v, '', '', 0, f(now)}
  end
end
local probe = 0
if r.breaker ~= '' then
  local b = breaker_load(KEYS[2], r.breaker)
  local state, probing = breaker_view(b)
  if state == 'open' then return {0, f(b.open_until - now), 'breaker', '', '', '', 0, f(now)} end
  if probing then return {0, f(r.recheck), 'breaker', '', '', '', 0, f(now)} end
  if state == 'half_open' then probe = 1 end
end
local levels = {}
local worst, which = 0, ''
for i, s in ipairs(r.buckets) do
  -- s: field, rate, capacity, initial, amount, reserve
  local b = bucket_level(KEYS[3], s[1], s[2], s[3], s[4])
  levels[i] = b
  local keep = 0
  if r.lane == 'batch' then keep = s[6] * s[3] end
  local need = math.min(s[5], s[3]) + keep - b[1]
  local wait = 0
  if need > 1e-9 then wait = need / math.max(s[2], 1e-9) end
  wait = math.max(wait, b[3] - now)
  if wait > worst then worst, which = wait, s[1] end
end
if worst > 0 then
  -- a new bucket is kept as it starts, refused or not: it fills from its first ask on
  for i, s in ipairs(r.buckets) do
    if levels[i][4] then bucket_save(KEYS[3], s[1], levels[i]) end
  end
  return {0, f(worst), 'bucket', '', which, '', 0, f(now)}
end
local slot = ''
if r.slot_limit > 0 then
  if not slot_take(KEYS[4], r.slot_limit, r.slot_ttl, ARGV[4]) then
    return {0, f(r.recheck), 'slots', '', '', '', 0, f(now)}
  end
  slot = ARGV[4]
end
for i, s in ipairs(r.buckets) do
  local b = levels[i]
  b[1] = b[1] - s[5]
  bucket_save(KEYS[3], s[1], b)
end
if probe == 1 then
  local b = breaker_load(KEYS[2], r.breaker)
  b.probe_until = now + r.probe_ttl
  breaker_save(KEYS[2], r.breaker, b)
end
return {1, '0', '', '', '', slot, probe, f(now)}
"""

# KEYS[1] slots; ARGV[3] limit, [4] ttl, [5] token. Returns the token or ''.
_SLOT = r"""
if slot_take(KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]) then return ARGV[5] end
return ''
"""

# KEYS[1] buckets; ARGV[3] op (adjust | lower | empty | read), [4] until as seconds from now ('' none),
# [5] the buckets (JSON: field, rate, capacity, initial, amount, level). Returns the levels.
_BUCKETS = r"""
local op = ARGV[3]
local out = {}
for i, s in ipairs(cjson.decode(ARGV[5])) do
  local b = bucket_level(KEYS[1], s[1], s[2], s[3], s[4])
  if op == 'adjust' then
    b[1] = math.min(s[3], b[1] + s[5])
  elseif op == 'lower' then
    b[1] = math.min(b[1], s[6])
  elseif op == 'empty' then
    b[1] = math.min(b[1], 0)
    if ARGV[4] ~= '' then b[3] = math.max(b[3], now + tonumber(ARGV[4])) end
  end
  if op ~= 'read' then bucket_save(KEYS[1], s[1], b) end
  out[i] = f(b[1])
end
return out
"""

# KEYS[1] an account's buckets; ARGV[3] the account (the key's tag), [4] drop the buckets whose
# "account|field" contains this ('' = all). Returns how many were dropped.
_DROP = r"""
local n = 0
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if ARGV[4] == '' or string.find(ARGV[3] .. '|' .. field, ARGV[4], 1, true) then
    redis.call('HDEL', KEYS[1], field)
    n = n + 1
  end
end
return n
"""

SCRIPTS: dict[str, str] = {name: _PRELUDE + body for name, body in (
    ("count", _COUNT), ("hold", _HOLD), ("holds", _HOLDS), ("breaker", _BREAKER), ("deal", _DEAL),
    ("least", _LEAST), ("admit", _ADMIT), ("slot", _SLOT), ("buckets", _BUCKETS), ("drop", _DROP))}
_SHAS = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in SCRIPTS.items()}


_timeout: Any = getattr(asyncio, "timeout", None)


def _safe_tag(tag: str) -> str:
    # a brace inside the tag would end it early and split an account's keys across slots
    return tag.replace("{", "(").replace("}", ")")


def _num(x: float) -> str:
    return repr(float(x)) if math.isfinite(x) else ("inf" if x > 0 else "-inf")


# ---- the store ---------------------------------------------------------------------------------------


class RedisShared:
    """The shared state on a Redis server, for every process of every machine that names it.

    Raw: a failure (refused, timed out, lost) raises `StoreDown`; `GuardedState` turns that into local
    answers. One client per event loop (redis-py's asyncio connections belong to the loop that made them).

    Args:
        url: `redis://` or `rediss://`; kept private (its password is never shown).
        prefix: put before every key (one team's, one deployment's).
        clock: the caller's clock: deadlines given and returned are in its wall time.
        timeout_s: the longest a verb waits for the server, in all.
    """

    kind = "redis"

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, clock: Clock = SYSTEM_CLOCK,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.parsed = parse_redis_url(url)
        self._url = url.strip()
        self.prefix = prefix
        self.clock = clock
        self.timeout_s = timeout_s
        #: seconds added to the server's clock in every script: for tests that move time by hand
        self.shift_s = 0.0
        #: verbs answered and round trips made (what a benchmark reads)
        self.round_trips = 0
        self._clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = weakref.WeakKeyDictionary()
        self._last_holds: dict[str, Hold] = {}

    def __repr__(self) -> str:
        return f"RedisShared({self.parsed.shown!r}, prefix={self.prefix!r})"

    @property
    def url(self) -> str:
        """The URL as messages show it (no password)."""
        return self.parsed.shown

    @property
    def mode(self) -> str:
        return "shared"

    @property
    def warning(self) -> str | None:
        return None

    def mirror_holds(self) -> dict[str, Hold]:
        return dict(self._last_holds)

    # ---- keys ---------------------------------------------------------------------------------

    def key(self, tag: str, space: str) -> str:
        """The Redis key of one space of a tag (an account's holds, breakers, buckets, slots; a counter)."""
        return f"{self.prefix}{{{_safe_tag(tag)}}}:{space}"

    @property
    def index_key(self) -> str:
        """The set of tags that have held something (read all holds from these)."""
        return f"{self.prefix}hold-tags"

    @property
    def marker_key(self) -> str:
        """Present while the server keeps what was written: gone after a restart that lost the data."""
        return f"{self.prefix}alive"

    # ---- the connection -----------------------------------------------------------------------

    def client(self) -> Any:
        """This event loop's client (made on first use)."""
        loop = asyncio.get_running_loop()
        c = self._clients.get(loop)
        if c is None:
            c = self._clients[loop] = self.make_client(asyncio_client=True)
        return c

    def make_client(self, *, asyncio_client: bool) -> Any:
        """A redis-py client for the URL, with the timeout on every socket operation. A connection found
        closed (the server restarted since it was last used) is tried once more on a fresh one; a timeout
        is never retried (that would multiply the wait the timeout bounds)."""
        import redis
        import redis.asyncio
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        kwargs: dict[str, Any] = dict(socket_timeout=self.timeout_s, socket_connect_timeout=self.timeout_s,
                                      retry_on_timeout=False, decode_responses=True, health_check_interval=0)
        if asyncio_client:
            from redis.asyncio.retry import Retry as AsyncRetry
            return redis.asyncio.Redis.from_url(
                self._url, retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)), **kwargs)
        from redis.retry import Retry
        return redis.Redis.from_url(self._url, retry=Retry(NoBackoff(), 0), **kwargs)

    def down_error(self, exc: BaseException) -> StoreDown:
        """The StoreDown a redis-py or socket failure means (its text without the password)."""
        text = scrub_pieces(str(exc) or type(exc).__name__)
        if self.parsed.password:
            text = text.replace(self.parsed.password, "***")
        timeout = isinstance(exc, (asyncio.TimeoutError, TimeoutError)) or type(exc).__name__ == "TimeoutError"
        if timeout:
            text = f"no answer within {self.timeout_s * 1000:g} ms"
        return StoreDown(f"Redis at {self.url}: {text}", timeout=timeout)

    async def _guard(self, coro: Any) -> Any:
        """Await a redis-py call within the timeout; every failure becomes StoreDown."""
        import redis.exceptions as rx

        try:
            if _timeout is not None:  # Python 3.11+: a deadline on this task, cheaper than wait_for's new task
                async with _timeout(self.timeout_s):
                    return await coro
            return await asyncio.wait_for(coro, self.timeout_s)
        except (rx.RedisError, OSError, asyncio.TimeoutError) as exc:
            raise self.down_error(exc) from None

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script by its hash; load it if the server does not know it (a restart)."""
        return await self._guard(self._evalsha(name, keys, args))

    async def _evalsha(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        import redis.exceptions as rx

        c = self.client()
        full = [_num(self.shift_s), str(_IDLE_TTL_MS), *args]
        self.round_trips += 1
        try:
            return await c.evalsha(_SHAS[name], len(keys), *keys, *full)
        except rx.NoScriptError:
            await c.script_load(SCRIPTS[name])
            self.round_trips += 2
            return await c.evalsha(_SHAS[name], len(keys), *keys, *full)

    async def ping(self) -> None:
        """Ask the server for an answer (raises StoreDown)."""
        self.round_trips += 1
        await self._guard(self.client().ping())

    async def mark(self) -> bool:
        """Set the marker key; True if it was missing: first use, or a server that lost what it kept
        (restarted without persistence, flushed), whose holds the kernels' mirrors must write again."""
        self.round_trips += 1
        return bool(await self._guard(self.client().set(self.marker_key, "1", nx=True)))

    # ---- time ---------------------------------------------------------------------------------

    def _local(self, server_t: float, server_now: float) -> float:
        """A server time as the caller's wall time."""
        return self.clock.time() + (server_t - server_now)

    def _hold(self, value: str, server_now: float) -> Hold:
        kind, until, reason, detail, updated = json.loads(value)
        return Hold(kind=HoldKind(kind), until=self._local(float(until), server_now), reason=reason, detail=detail,
                    updated=self._local(float(updated), server_now))

    # ---- counters -----------------------------------------------------------------------------

    def _count_args(self, n: float, window: Window, add: bool) -> list[str]:
        w = "inf" if math.isinf(window.seconds) else _num(window.seconds)
        return [_num(n), w, "1" if window.sliding else "0", str(SLICES), "1" if add else "0"]

    async def add(self, key: str, n: float, window: Window) -> float:
        return float(await self._script("count", [self.key(key, f"c:{window.name}")], self._count_args(n, window, True)))

    async def count(self, key: str, window: Window) -> float:
        return float(await self._script("count", [self.key(key, f"c:{window.name}")], self._count_args(0, window, False)))

    # ---- holds ----------------------------------------------------------------------------------

    def _hold_args(self, key: str, kind: str, until: float, reason: str, detail: str) -> list[str]:
        return [key, HoldKind(kind).value, _num(until - self.clock.time()), scrub_pieces(reason), detail]

    async def extend_hold(self, key: str, kind: str, until: float, reason: str, detail: str = "") -> Hold:
        tag = tag_of(key)

        async def both() -> Any:
            c = self.client()
            self.round_trips += 1
            pipe = c.pipeline(transaction=False)
            pipe.evalsha(_SHAS["hold"], 1, self.key(tag, "h"), _num(self.shift_s), str(_IDLE_TTL_MS),
                         *self._hold_args(key, kind, until, reason, detail))
            pipe.sadd(self.index_key, tag)
            results = await pipe.execute(raise_on_error=False)
            if isinstance(results[0], Exception):
                import redis.exceptions as rx
                if not isinstance(results[0], rx.NoScriptError):
                    raise results[0]
                return await self._evalsha("hold", [self.key(tag, "h")], self._hold_args(key, kind, until, reason, detail))
            return results[0]

        value, now_s = await self._guard(both())
        h = self._hold(value, float(now_s))
        self._last_holds[key] = h
        return h

    async def _tags(self) -> list[str]:
        self.round_trips += 1
        return sorted(await self._guard(self.client().smembers(self.index_key)))

    async def _each_tag(self, clear: bool, match: str | None) -> list[Any]:
        tags = await self._tags()
        if not tags:
            return []

        async def all_tags() -> list[Any]:
            import redis.exceptions as rx

            c = self.client()
            args = [_num(self.shift_s), str(_IDLE_TTL_MS), "1" if clear else "0", match or ""]
            for attempt in range(2):
                self.round_trips += 1
                pipe = c.pipeline(transaction=False)
                for tag in tags:
                    pipe.evalsha(_SHAS["holds"], 1, self.key(tag, "h"), *args)
                results = await pipe.execute(raise_on_error=False)
                if attempt == 0 and any(isinstance(r, rx.NoScriptError) for r in results):
                    await c.script_load(SCRIPTS["holds"])
                    continue  # reading and clearing twice changes nothing a first pass did
                for r in results:
                    if isinstance(r, Exception):
                        raise r
                return list(results)
            return []

        return list(await self._guard(all_tags()))

    async def holds(self) -> dict[str, Hold]:
        out: dict[str, Hold] = {}
        for reply in await self._each_tag(False, None):
            now_s = float(reply[0])
            for i in range(2, len(reply), 2):
                out[reply[i]] = self._hold(reply[i + 1], now_s)
        self._last_holds = dict(out)
        return out

    async def clear_holds(self, match: str | None = None) -> int:
        n = sum(int(reply[1]) for reply in await self._each_tag(True, match))
        for key in [k for k in self._last_holds if match is None or match in k]:
            del self._last_holds[key]
        return n

    # ---- breakers -------------------------------------------------------------------------------

    async def _breaker(self, op: str, key: str, window_s: float = 0.0, threshold: int = 0, open_s: float = 0.0,
                       open_now: bool = False, probe_ttl_s: float = 0.0) -> tuple[bool, BreakerView]:
        r = await self._script("breaker", [self.key(tag_of(key), "b")],
                               [op, key, _num(window_s), str(threshold), _num(open_s), "1" if open_now else "0", _num(probe_ttl_s)])
        admitted, state, open_until, failures, probing, now_s = r
        until = self._local(float(open_until), float(now_s)) if state != "closed" else 0.0
        return bool(int(admitted)), BreakerView(state, until, int(failures), bool(int(probing)))

    async def breaker_failure(self, key: str, *, window_s: float, threshold: int, open_s: float,
                              open_now: bool = False) -> BreakerView:
        return (await self._breaker("fail", key, window_s, threshold, open_s, open_now))[1]

    async def breaker_admits(self, key: str, probe_ttl_s: float) -> tuple[bool, BreakerView]:
        return await self._breaker("admit", key, probe_ttl_s=probe_ttl_s)

    async def breaker_success(self, key: str) -> None:
        await self._breaker("success", key)

    async def end_probe(self, key: str) -> None:
        await self._breaker("end", key)

    async def breaker(self, key: str) -> BreakerView:
        return (await self._breaker("read", key))[1]

    # ---- rotation -------------------------------------------------------------------------------

    async def next_turn(self, key: str, n: int) -> int:
        self.round_trips += 1
        value = int(await self._guard(self.client().incr(self.key(key, "t"))))
        return (value - 1) % max(n, 1)

    async def deal(self, key: str, n: int) -> int:
        return int(await self._script("deal", [self.key(key, "d"), self.key(key, "dn")], [str(max(n, 1)), *map(str, shuffled(n))]))

    async def least_used(self, key: str, members: Sequence[str]) -> str:
        return str(await self._script("least", [self.key(key, "u")], list(members)))

    # ---- admission --------------------------------------------------------------------------------

    def _admit_keys(self, account: str) -> list[str]:
        return [self.key(account, "h"), self.key(account, "b"), self.key(account, "k"), self.key(account, "s")]

    async def admit(self, request: AdmitRequest) -> Admission:
        from .shared import SLOT_RECHECK_S

        body = {
            "holds": list(request.holds), "breaker": request.breaker or "", "probe_ttl": request.probe_ttl_s,
            "lane": request.lane, "recheck": SLOT_RECHECK_S,
            "buckets": [[s.field, s.rate, s.capacity, s.initial, s.amount, s.reserve] for s in request.buckets],
            "slot_limit": request.slot.limit if request.slot else 0, "slot_ttl": request.slot.ttl_s if request.slot else 0,
        }
        r = await self._script("admit", self._admit_keys(request.account), [json.dumps(body), new_token()])
        admitted, wait, reason, hold, bucket, slot, probe, now_s = r
        return Admission(bool(int(admitted)), float(wait), reason, hold=self._hold(hold, float(now_s)) if hold else None,
                         bucket=bucket, slot=slot or None, probe=bool(int(probe)))

    async def acquire_slot(self, account: str, slot: SlotRequest) -> str | None:
        token = await self._script("slot", [self.key(account, "s")], [str(slot.limit), _num(slot.ttl_s), new_token()])
        return str(token) or None

    def _bucket_json(self, specs: Sequence[BucketSpec], level: float = 0.0) -> str:
        return json.dumps([[s.field, s.rate, s.capacity, s.initial, s.amount, level] for s in specs])

    async def buckets(self, account: str, specs: Sequence[BucketSpec]) -> dict[str, float]:
        if not specs:
            return {}
        r = await self._script("buckets", [self.key(account, "k")], ["read", "", self._bucket_json(specs)])
        return {s.field: float(v) for s, v in zip(specs, r)}

    def _glob(self, text: str) -> str:
        """`text` as a literal inside a SCAN pattern."""
        return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)

    async def _bucket_keys(self) -> list[str]:
        """Every account's bucket hash under the prefix: a SCAN, each page within the timeout (a reset is
        rare; an index of bucket keys would cost every admission a write outside the account's slot)."""
        pattern = self._glob(self.prefix) + "{*}:k"
        keys: set[str] = set()
        cursor: Any = 0
        while True:
            self.round_trips += 1
            cursor, page = await self._guard(self.client().scan(cursor, match=pattern, count=1000))
            keys.update(page)
            if int(cursor) == 0:
                return sorted(keys)

    async def clear_buckets(self, match: str | None = None) -> int:
        keys = await self._bucket_keys()
        if not keys:
            return 0

        async def drop_all() -> int:
            import redis.exceptions as rx

            c = self.client()
            start = len(self.prefix) + 1  # the tag: between the prefix's "{" and the closing "}:k"
            args = [(key, key[start:-3]) for key in keys]
            for attempt in range(2):
                self.round_trips += 1
                pipe = c.pipeline(transaction=False)
                for key, tag in args:  # one script per account: each touches its own key (its own slot)
                    pipe.evalsha(_SHAS["drop"], 1, key, _num(self.shift_s), str(_IDLE_TTL_MS), tag, match or "")
                results = await pipe.execute(raise_on_error=False)
                if attempt == 0 and any(isinstance(r, rx.NoScriptError) for r in results):
                    await c.script_load(SCRIPTS["drop"])
                    continue  # dropping twice drops nothing more
                for r in results:
                    if isinstance(r, Exception):
                        raise r
                return sum(int(r) for r in results)
            return 0

        return int(await self._guard(drop_all()))

    # ---- writes after a call: one pipeline ---------------------------------------------------------

    def _write_command(self, w: Write) -> tuple[str | None, list[Any]]:
        """(script name, keys + args) of one write; a None name is a plain command."""
        shift = [_num(self.shift_s), str(_IDLE_TTL_MS)]
        if isinstance(w, ReleaseSlot):
            return None, ["ZREM", self.key(w.account, "s"), w.token]
        if isinstance(w, AdjustBucket):
            return "buckets", [1, self.key(w.account, "k"), *shift, "adjust", "", self._bucket_json([w.bucket])]
        if isinstance(w, LowerBucket):
            return "buckets", [1, self.key(w.account, "k"), *shift, "lower", "", self._bucket_json([w.bucket], w.level)]
        if isinstance(w, EmptyBuckets):
            until = "" if w.until is None else _num(w.until - self.clock.time())
            return "buckets", [1, self.key(w.account, "k"), *shift, "empty", until, self._bucket_json(w.buckets)]
        if isinstance(w, AddCount):
            return "count", [1, self.key(w.key, f"c:{w.window.name}"), *shift, *self._count_args(w.n, w.window, True)]
        if isinstance(w, ExtendHold):
            return "hold", [1, self.key(tag_of(w.key), "h"), *shift, *self._hold_args(w.key, w.kind, w.until, w.reason, w.detail)]
        if isinstance(w, BreakerSuccess):
            return "breaker", [1, self.key(tag_of(w.key), "b"), *shift, "success", w.key, "0", "0", "0", "0", "0"]
        raise TypeError(f"not a write: {w!r}")

    async def apply(self, writes: Sequence[Write]) -> None:
        if not writes:
            return
        commands = [self._write_command(w) for w in writes]
        extra = [["SADD", self.index_key, tag_of(w.key)] for w in writes if isinstance(w, ExtendHold)]

        async def send() -> None:
            import redis.exceptions as rx

            c = self.client()
            pending = [("EVALSHA", _SHAS[name], *args) if name else tuple(args) for name, args in commands]
            pending += [tuple(e) for e in extra]
            for attempt in range(2):
                self.round_trips += 1
                pipe = c.pipeline(transaction=False)
                for command in pending:
                    pipe.execute_command(*command)
                results = await pipe.execute(raise_on_error=False)
                missing = [cmd for cmd, r in zip(pending, results) if isinstance(r, rx.NoScriptError)]
                failed = [r for r in results if isinstance(r, Exception) and not isinstance(r, rx.NoScriptError)]
                if failed:
                    raise failed[0]
                if not missing or attempt:
                    return
                for name in {name for name, _ in commands if name}:
                    await c.script_load(SCRIPTS[name])
                pending = missing  # only what the server refused: the rest is done and must not be done twice

        await self._guard(send())

    async def close(self) -> None:
        """Close the clients: this loop's now, a running loop's on that loop; a closed loop's are dropped."""
        clients = list(self._clients.items())
        self._clients.clear()
        here = asyncio.get_running_loop()
        for loop, c in clients:
            try:
                if loop is here:
                    await c.aclose()
                elif loop.is_running():
                    asyncio.run_coroutine_threadsafe(c.aclose(), loop)
            except Exception:  # closing is best effort: the connections go with the process anyway
                pass
