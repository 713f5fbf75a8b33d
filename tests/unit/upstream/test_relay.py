"""Passing the upstream's response on to the client."""

import asyncio

from proxy.upstream.relay import _copy_batched


async def test_flush_interval_batches_small_pieces_without_losing_any():
    class Source:                          # what _copy_batched reads: an upstream body, piece by piece
        async def iter_any(self):
            for i in range(50):
                await asyncio.sleep(0.002)
                yield b"%02d" % i

    class Sink:
        def __init__(self):
            self.writes = []

        async def write(self, data):
            self.writes.append(data)

    sink = Sink()
    await _copy_batched(Source(), sink, interval=0.05)
    assert b"".join(sink.writes) == b"".join(b"%02d" % i for i in range(50))
    assert 1 <= len(sink.writes) < 50                 # batched: fewer writes than pieces
