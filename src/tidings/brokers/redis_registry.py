"""The node registry in Redis: one hash, ``<prefix>{admin}:nodes``, field per node.

A field's value is ``"<expiry ms> <record>"``, the expiry taken from Redis' own clock
(``TIME``) when it is written, and compared with that clock when read: nodes on machines
whose clocks disagree still agree on who is alive. Each write also drops the fields
that expired (a node that died without removing its own), and the hash itself expires
RECORD_TTL_S after the last write of any node. One script per call, one round trip.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from tidings.errors import BrokerUnavailable
from tidings.registry import RECORD_TTL_S

# KEYS: the hash. ARGV: node id, record, ttl_ms.
_WRITE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local expiry = tonumber(string.match(all[i + 1], '^(%d+) '))
  if not expiry or expiry <= now then redis.call('HDEL', KEYS[1], all[i]) end
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now + tonumber(ARGV[3])) .. ' ' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: the hash. Returns {node, record, ...} of the fields not expired.
_READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local expiry, record = string.match(all[i + 1], '^(%d+) (.*)$')
  if expiry and tonumber(expiry) > now then
    out[#out + 1] = all[i]
    out[#out + 1] = record
  end
end
return out
"""


@contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        raise BrokerUnavailable(f"redis unavailable: {exc}") from exc


class RedisRegistry:
    """Node records in one Redis hash with per-field expiry (see the module docstring)."""

    def __init__(
        self, redis: Redis | RedisCluster, *, prefix: str = "tidings:", ttl_s: float = RECORD_TTL_S
    ) -> None:
        self._redis = redis
        self.key = prefix + "{admin}:nodes"
        self.ttl_s = ttl_s
        self._write = redis.register_script(_WRITE)
        self._read = redis.register_script(_READ)

    async def write(self, node_id: str, record: bytes) -> None:
        with _redis_errors():
            await self._write(keys=[self.key], args=[node_id, record, int(self.ttl_s * 1000)])

    async def remove(self, node_id: str) -> None:
        with _redis_errors():
            await self._redis.hdel(self.key, node_id)

    async def records(self) -> dict[str, bytes]:
        with _redis_errors():
            reply = await self._read(keys=[self.key], args=[])
        return {
            _text(node): bytes(record) for node, record in zip(reply[::2], reply[1::2], strict=True)
        }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
