"""What ``cookie.idle_timeout`` costs the Redis store per request: ``load`` without it (one GET) and with it
(GET and PTTL pipelined: still one round trip), against a real redis-server on 127.0.0.1.

    python bench/redis_idle_load.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.config import RedisConfig
from proxy.crypto import Sealer
from proxy.model import Identity, Session
from proxy.redis_store import RedisStore
from tests.support.ports import free_port
from tests.support.redis_server import start_redis

LOADS = 3000


async def main() -> None:
    server = await start_redis(free_port())
    try:
        sealer = Sealer([b"k" * 32])
        for idle in (None, 1800.0):
            store = RedisStore(RedisConfig(url=server.url), "_authproxy", 3600, sealer, idle_timeout=idle)
            s = Session(identity=Identity(sub="alice"), access_token="A" * 800, created_at=time.time(),
                        refresh_token="R" * 43, id="x" * 22)
            cookies = dict(await store.save(s, {}))
            for _ in range(200):                       # warm up the connection pool
                await store.load(cookies)
            start = time.perf_counter()
            for _ in range(LOADS):
                await store.load(cookies)
            print(f"idle_timeout={idle}: {(time.perf_counter() - start) / LOADS * 1e6:.0f} µs per load")
            await store.close()
    finally:
        await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
