"""Redis adapter (redis-py). ``apply_once`` is one Lua script, so it is atomic on the server:
a consumer that crashes half-way and sees the event again neither double-counts nor loses it.
"""

from __future__ import annotations

import redis

from signwatch.ports.state import Increment, OutboxEntry, Push

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


class RedisState:
    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=5, socket_connect_timeout=5,
            health_check_interval=30, retry_on_timeout=True,
        )
        self._apply = self._client.register_script(_APPLY_ONCE)
        self._claim = self._client.register_script(_CLAIM)

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

    def delete(self, *keys: str) -> None:
        if keys:
            self._client.delete(*keys)

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self._client.close()
