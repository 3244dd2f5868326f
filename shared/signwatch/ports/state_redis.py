"""Redis adapter (redis-py). ``apply_once`` is one Lua script, so it is atomic on the server:
a consumer that crashes half-way and sees the event again neither double-counts nor loses it.
"""

from __future__ import annotations

import redis

from signwatch.ports.state import Increment, JoinItem, JoinKeys, OutboxEntry, Push

# KEYS[1] = token; then the increment keys; then the push keys.
# ARGV = token_ttl, n_incr, (field, amount, ttl) * n_incr, (value, max_len, ttl) * n_push
_APPLY_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) == false then
  return 0
end
local n_incr = tonumber(ARGV[2])
local a = 3
local last = nil
for i = 1, n_incr do
  local key = KEYS[1 + i]
  redis.call('HINCRBY', key, ARGV[a], ARGV[a + 1])
  if key ~= last then  -- increments of one hash share one EXPIRE
    redis.call('EXPIRE', key, ARGV[a + 2])
    last = key
  end
  a = a + 3
end
for i = 2 + n_incr, #KEYS do
  local key = KEYS[i]
  redis.call('LPUSH', key, ARGV[a])
  redis.call('LTRIM', key, 0, tonumber(ARGV[a + 1]) - 1)
  redis.call('EXPIRE', key, ARGV[a + 2])
  a = a + 3
end
return 1
"""

# KEYS[1] = the claimed key, KEYS[2] = the outbox hash, KEYS[3] = the entry's lease, then keys to delete.
# ARGV = value, ttl, entry id, entry value, outbox ttl, lease ttl
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) == false then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[6])
for i = 4, #KEYS do
  redis.call('DEL', KEYS[i])
end
return 1
"""

# KEYS = the day hashes' names (newest first; sharded: name:field[:n]), their counters (same order),
# the pairs hash, the recent list. (A sharded day's hashes are not in KEYS: the script builds their
# names, which a standalone Redis or Sentinel allows; a Redis Cluster would need hash tags.)
# ARGV = n days, day ttl, pairs ttl, recent max, shard chars, then
# (side p|l, field, value, alias or '', note) * items.
# StateStore.join says what it does; MemoryState._join_one is the same, line for line.
_JOIN = """
local n = tonumber(ARGV[1])
local day_ttl, pairs_ttl, recent_max, k = ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local pairs_key, recent_key = KEYS[2 * n + 1], KEYS[2 * n + 2]
local function where(i, field)
  if k > 0 then return KEYS[i] .. ':' .. string.sub(field, 1, k), string.sub(field, k + 1) end
  return KEYS[i], field
end
local function find(field)
  for i = 1, n do
    local key, f = where(i, field)
    local v = redis.call('HGET', key, f)
    if v then return i, v end
  end
  return nil, nil
end
local function set(i, field, value)
  local key, f = where(i, field)
  redis.call('HSET', key, f, value)
  if i == 1 then redis.call('EXPIRE', key, day_ttl) end
end
local function bump(i, field, amount)
  redis.call('HINCRBY', KEYS[n + i], field, amount)
  redis.call('EXPIRE', KEYS[n + i], day_ttl)
end
local function pair(t, pred, note)
  local c = string.find(pred, ',', 1, true)
  local p, bin = string.sub(pred, 1, c - 1), string.sub(pred, c + 1)
  redis.call('HINCRBY', pairs_key, t .. ',' .. p, 1)
  redis.call('HINCRBY', pairs_key, 'n' .. bin, 1)
  if t == p then redis.call('HINCRBY', pairs_key, 'c' .. bin, 1) end
  redis.call('EXPIRE', pairs_key, pairs_ttl)
  redis.call('LPUSH', recent_key, t .. ',' .. p .. ',' .. bin .. ',' .. note)
  redis.call('LTRIM', recent_key, 0, recent_max - 1)
  redis.call('EXPIRE', recent_key, pairs_ttl)
  bump(1, 'matched', 1)
end
local out = {}
local a = 6
while a <= #ARGV do
  local side, field, value, alias, note = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  a = a + 5
  local result = nil
  if side == 'p' then
    for _, f in ipairs({field, alias}) do
      if result == nil and f ~= '' then
        local i, v = find(f)
        if v and string.sub(v, 1, 1) == 'L' then
          set(i, f, 'M')
          bump(i, 'labels_waiting', -1)
          if f == alias then set(1, field, 'M') elseif alias ~= '' then
            local j, w = find(alias)  -- labelled by its other id too before it came: that label is a duplicate
            if w and string.sub(w, 1, 1) == 'L' then bump(j, 'labels_waiting', -1) bump(1, 'duplicates', 1) end
            set(1, alias, 'A' .. field)
          end
          pair(string.sub(v, 2), value, note)
          result = 'matched'
        elseif v and f == field then
          result = 'seen'
        end
      end
    end
    if result == nil then
      set(1, field, 'P' .. value)
      if alias ~= '' then set(1, alias, 'A' .. field) end
      bump(1, 'predictions_pending', 1)
      result = 'pending'
    end
  else
    local f = field
    local i, v = find(f)
    if v and string.sub(v, 1, 1) == 'A' then
      f = string.sub(v, 2)
      i, v = find(f)
    end
    if v == nil then
      set(1, field, 'L' .. value)
      bump(1, 'labels_waiting', 1)
      result = 'waiting'
    elseif string.sub(v, 1, 1) == 'P' then
      set(i, f, 'M')
      bump(i, 'predictions_pending', -1)
      pair(value, string.sub(v, 2), note)
      result = 'matched'
    else
      bump(1, 'duplicates', 1)
      result = 'duplicate'
    end
  end
  out[#out + 1] = result
end
return out
"""
# Items per script call: the server runs nothing else while a script runs (500 take ~2 ms).
JOIN_CHUNK = 500


class RedisState:
    def __init__(self, url: str, **client_options) -> None:
        """``client_options``: redis-py's (password, ssl_ca_certs, ...), from ``RedisSecurity``."""
        self._client = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5,
            health_check_interval=30, retry_on_timeout=True, **client_options,
        )
        self._apply = self._client.register_script(_APPLY_ONCE)
        self._claim = self._client.register_script(_CLAIM)
        self._join = self._client.register_script(_JOIN)

    @staticmethod
    def _script_args(token: str, token_ttl_s: int, increments: list[Increment], pushes: list[Push]):
        keys = [token] + [i.key for i in increments] + [p.key for p in pushes]
        args: list[object] = [token_ttl_s, len(increments)]
        for i in increments:
            args += [i.field, i.amount, i.ttl_s]
        for p in pushes:
            args += [p.value, p.max_len, p.ttl_s]
        return keys, args

    def apply_once(
        self, token: str, token_ttl_s: int, increments: list[Increment], pushes: list[Push]
    ) -> bool:
        keys, args = self._script_args(token, token_ttl_s, increments, pushes)
        return bool(self._apply(keys=keys, args=args))

    def apply_many(self, batch: list[tuple[str, int, list[Increment], list[Push]]]) -> list[bool]:
        """One pipelined round trip; each script call is still atomic on its own."""
        if not batch:
            return []
        pipe = self._client.pipeline(transaction=False)
        for item in batch:
            keys, args = self._script_args(*item)
            self._apply(keys=keys, args=args, client=pipe)
        return [bool(r) for r in pipe.execute()]

    def get_counts(self, keys: list[str]) -> list[dict[str, int]]:
        pipe = self._client.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(k)
        return [{f: int(v) for f, v in h.items()} for h in pipe.execute()]

    def get_list(self, key: str) -> list[str]:
        return self._client.lrange(key, 0, -1)

    def set_once(self, key: str, ttl_s: int) -> bool:
        return bool(self._client.set(key, "1", nx=True, ex=max(1, ttl_s)))

    def set_value(self, key: str, value: str, ttl_s: int, if_absent: bool = False) -> bool:
        return bool(self._client.set(key, value, nx=if_absent, ex=max(1, ttl_s)))

    def get_value(self, key: str) -> str | None:
        return self._client.get(key)

    def claim(self, key: str, value: str, ttl_s: int, entry: OutboxEntry, delete: tuple[str, ...] = ()) -> bool:
        """One Lua script: the claim, its outbox entry and lease are all written or none."""
        keys = [key, entry.outbox, entry.lease, *delete]
        args = [value, max(1, ttl_s), entry.entry_id, entry.value, max(1, entry.ttl_s), max(1, entry.lease_s)]
        return bool(self._claim(keys=keys, args=args))

    def outbox(self, key: str) -> dict[str, str]:
        return self._client.hgetall(key)

    def outbox_done(self, key: str, entry_id: str) -> None:
        self._client.hdel(key, entry_id)

    def join(self, keys: JoinKeys, items: list[JoinItem]) -> list[str]:
        """Lua scripts of ``JOIN_CHUNK`` items, pipelined in one round trip; each item atomic."""
        if not items:
            return []
        script_keys = [*keys.days, *keys.day_stats, keys.pairs, keys.recent]
        head = [len(keys.days), max(1, keys.day_ttl_s), max(1, keys.pairs_ttl_s), keys.recent_max, keys.shard_chars]
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(items), JOIN_CHUNK):
            args: list[object] = list(head)
            for it in items[start:start + JOIN_CHUNK]:
                args += ["p" if it.side == "prediction" else "l", it.field, it.value, it.alias or "", it.note]
            self._join(keys=script_keys, args=args, client=pipe)
        return [outcome for chunk in pipe.execute() for outcome in chunk]

    def delete(self, *keys: str) -> None:
        if keys:
            self._client.delete(*keys)

    def failovers(self) -> int:
        return 0  # one server: a restart without persistence is found by the data it lost

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._client.close()


def open_url(url, credentials) -> RedisState:
    """``redis://``, ``rediss://`` (TLS) or ``unix://``, with the credentials' password and TLS files.
    A server that turns the client away (wrong password, untrusted certificate) is ServerRefused now;
    one that is down is not (the services start and wait for it)."""
    options = credentials.redis.client_options(url.parsed.scheme)
    check_access(url.url, url.redacted, options)
    return RedisState(url.url, **options)


def check_access(url: str, redacted: str, options: dict, timeout_s: float = 2.0) -> None:
    from signwatch.ports.security import ServerRefused

    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, **options)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise ServerRefused(f"redis at {redacted}: authentication failed (wrong password or user?): {exc}") from None
    except redis.ResponseError as exc:
        if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
            raise ServerRefused(f"redis at {redacted}: {exc} (set SIGNWATCH_REDIS_PASSWORD)") from None
    except redis.ConnectionError as exc:
        if "certificate" in str(exc).lower() or "ssl" in str(exc).lower():
            raise ServerRefused(f"redis at {redacted}: TLS handshake failed (a server certificate not signed by "
                                f"SIGNWATCH_REDIS_SSL_CA_FILE, or a wrong host name?): {exc}") from None
    except redis.RedisError:
        pass  # down or slow: not a refusal; readiness says so until it answers
    finally:
        client.close()


# -- Redis with Sentinel: the services follow the master that Sentinel names ---------------------

class SentinelRedisState(RedisState):
    """RedisState on the master that the Sentinels name now. A connection that finds its server
    gone or no longer master (a failover) asks the Sentinels again and reconnects to the new
    master; the failed call raises (ConnectionError, ReadOnlyError), which the consumer loops
    retry as they retry any outage (signwatch.consuming). Replication is asynchronous: what the
    old master acknowledged and had not yet sent its replica is lost, and the monitor rebuilds its
    windows from the topic when it finds them gone (monitoring.windows.lost)."""

    def __init__(self, sentinels: list[tuple[str, int]], master: str, db: int = 0, **client_options) -> None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        from redis.sentinel import Sentinel

        # The master's connections: the same timeouts and retry as RedisState's. Each Sentinel is
        # asked once more at most (redis-py's default, 10 times with backoff, made a readiness
        # probe take 8 s with the Sentinels away); the next Sentinel is asked after it.
        self._sentinel = Sentinel(sentinels, sentinel_kwargs={
            "socket_timeout": 5, "socket_connect_timeout": 5, "retry": Retry(NoBackoff(), 1)})
        self._client = self._sentinel.master_for(
            master, db=db, decode_responses=True, socket_timeout=5, socket_connect_timeout=5,
            health_check_interval=30, retry_on_timeout=True, **client_options,
        )
        self._apply = self._client.register_script(_APPLY_ONCE)
        self._claim = self._client.register_script(_CLAIM)
        self._join = self._client.register_script(_JOIN)
        self._master: tuple[str, int] | None = None
        self._failovers = 0

    def failovers(self) -> int:
        """Counted when the master the Sentinels name differs from the one connected before (no
        round trip: redis-py asks the Sentinels at every new connection and keeps the answer)."""
        pool = self._client.connection_pool
        address = getattr(pool, "proxy", pool).master_address  # redis-py 5.1+ keeps it on a proxy
        if address is not None and address != self._master:
            if self._master is not None:
                self._failovers += 1
            self._master = address
        return self._failovers

    def close(self) -> None:
        super().close()
        for sentinel in self._sentinel.sentinels:
            sentinel.close()


def parse_sentinel_url(netloc: str, path: str) -> tuple[list[tuple[str, int]], str, int]:
    """``host:port[,host:port...]`` and ``/master[/db]`` -> (the Sentinels, the master's name, db)."""
    from signwatch.ports import UnsupportedURL  # here: signwatch.ports imports this module lazily

    usage = "redis+sentinel://host:port[,host:port]/mastername[/db]"
    sentinels = []
    for part in filter(None, netloc.split(",")):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit():
            raise UnsupportedURL(f"{usage}: {part!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    parts = [p for p in path.split("/") if p]
    if not sentinels or not 1 <= len(parts) <= 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise UnsupportedURL(f"expected {usage}, got netloc {netloc!r} and path {path!r}")
    return sentinels, parts[0], int(parts[1]) if len(parts) == 2 else 0


def open_sentinel_url(url, credentials) -> SentinelRedisState:
    """``redis+sentinel://host:port[,host:port]/mastername[/db]``: the password (settings) is the
    master's and its replicas'; a password in the URL (``:password@``) wins, as in redis://."""
    from urllib.parse import unquote

    netloc = url.parsed.netloc
    options = credentials.redis.client_options(url.parsed.scheme)
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, _, password = userinfo.partition(":")
        options |= {k: unquote(v) for k, v in (("username", user), ("password", password)) if v}
    sentinels, master, db = parse_sentinel_url(netloc, url.parsed.path)
    return SentinelRedisState(sentinels, master, db, **options)
