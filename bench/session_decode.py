"""Micro-benchmark: the per-request session decode, ``CookieCodec.load``, against ``json.loads`` of the same plaintext.

Every authenticated request opens its session cookie: base64url-decode, AES-256-GCM open, JSON parse,
rebuild the ``Session``, check its times. ``json.loads`` of the very plaintext inside the cookie is the
floor any cookie session pays, so ``load / json.loads`` says how much the sealing and the dataclasses add.
``load`` is timed on cookies it has not seen before (a full decode) and, as "again", on the same cookie
over and over — what a browser sends — which a decoded-session cache in the proxy answers without opening it.
The parts (``Sealer.open``, ``Session.from_bytes``) are timed too, to show where the rest goes.

The machine is shared and busy, so the cases are timed in short slices (10 ms), alternating, and each
ratio compares adjacent slices, which saw about the same load; times shown are the fastest slice.
Two sessions: the one oidc-provider gives in the benchmarks (opaque 43-character tokens and an RS256 ID
token: one cookie of ≈ 1.7 KB), and one shaped like Keycloak's (JWT access and refresh tokens too:
≈ 4.5 KB, two cookie chunks). Cases alternate, several rounds; ratios are per round, then the median.

    python bench/session_decode.py [--rounds 5] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proxy.config import CookieConfig
from proxy.crypto import Sealer
from proxy.cookies import DECODED_CACHE_SIZE, CookieCodec
from proxy.session import Identity, Session


# Seconds per timed slice: short, so that adjacent slices of two cases see the same load on the machine.
SLICE = 0.01


def fake_jwt(payload_chars: int) -> str:
    """A token of JWT shape and size (header.payload.RS256 signature); only its length matters here."""
    def part(n: int) -> str:
        return base64.urlsafe_b64encode(os.urandom(n * 3 // 4 + 3)).decode().rstrip("=")[:n]
    return f"{part(100)}.{part(payload_chars)}.{part(342)}"


def sessions(now: float) -> dict[str, Session]:
    identity = Identity(sub="248289761001", email="jane.doe@example.com", preferred_username="jane",
                        name="Jane Doe", groups=("staff", "engineering", "oncall"))
    common = {"identity": identity, "created_at": now, "issued_at": now, "expires_at": now + 300,
              "sid": "fb2c6a3e-6f1c-4e5b-9d3e-2a8f1b7c9d01", "id": "bVhN0n7sYp3qKx2Wd9Lc4A"}
    return {
        "oidc-provider (opaque tokens)": Session(access_token=os.urandom(32).hex()[:43],
                                                 refresh_token=os.urandom(32).hex()[:43],
                                                 id_token=fake_jwt(420), **common),
        "Keycloak-like (JWT tokens)": Session(access_token=fake_jwt(1100), refresh_token=fake_jwt(500),
                                              id_token=fake_jwt(700), **common),
    }


def calls_for(fn: Callable[[], object], seconds: float) -> int:
    """How many calls of ``fn`` take about ``seconds``."""
    number, elapsed = timeit.Timer(fn).autorange()
    return max(1, int(number * seconds / elapsed))


def time_ns(fn: Callable[[], object], number: int) -> float:
    """Nanoseconds per call over ``number`` calls."""
    return timeit.Timer(fn).timeit(number) / number * 1e9


def main(args: argparse.Namespace) -> None:
    config = CookieConfig(secret=base64.urlsafe_b64encode(os.urandom(32)).decode(), secure=False)
    sealer = Sealer(config.keys)
    codec = CookieCodec(config, sealer, time.time)
    aad = config.name.encode()
    print(f"{'session':<31} {'cookie':>12} {'json.loads':>11} {'open':>9} {'from_bytes':>11} {'load':>9} "
          f"{'again':>8}  {'load / json.loads [rounds]':<32} {'again / json.loads [rounds]'}")
    for label, session in sessions(time.time()).items():
        cookies = dict(codec.dump(session))
        plaintext = session.to_bytes()
        sealed = "".join(cookies.values())
        assert codec.load(cookies) == session
        # More distinct cookies (each sealing has its own nonce) than any decoded-session cache holds:
        # cycling through them, every load is a first sight.
        distinct = [dict(codec.dump(session)) for _ in range(2 * DECODED_CACHE_SIZE + 7)]
        cycle = itertools.cycle(distinct)
        cases: dict[str, Callable[[], object]] = {
            "json": lambda plaintext=plaintext: json.loads(plaintext),
            "open": lambda sealed=sealed: sealer.open(sealed, aad),
            "from_bytes": lambda plaintext=plaintext: Session.from_bytes(plaintext),
            "load": lambda cycle=cycle: codec.load(next(cycle)),
            "load again": lambda cookies=cookies: codec.load(cookies),
        }
        numbers = {name: calls_for(fn, SLICE) for name, fn in cases.items()}
        times: dict[str, list[float]] = {name: [] for name in cases}
        ratios, agains, again_ratios = [], [], []
        slices = max(1, int(args.seconds / SLICE / len(cases)))
        for round_ in range(args.rounds):
            pair_ratios = []
            for i in range(slices):
                names = list(cases) if (round_ + i) % 2 == 0 else list(cases)[::-1]
                took = {name: time_ns(cases[name], numbers[name]) for name in names}
                for name, ns in took.items():
                    times[name].append(ns)
                pair_ratios.append(took["load"] / took["json"])
                again_ratios.append(took["load again"] / took["json"])
            ratios.append(statistics.median(pair_ratios))
            agains.append(statistics.median(again_ratios))
            again_ratios = []
        med = {name: min(values) for name, values in times.items()}
        size = f"{len(sealed)} B/{len(cookies)}"
        print(f"{label:<31} {size:>12} {med['json'] / 1000:>9.1f}µs {med['open'] / 1000:>7.1f}µs "
              f"{med['from_bytes'] / 1000:>9.1f}µs {med['load'] / 1000:>7.1f}µs {med['load again'] / 1000:>6.1f}µs  "
              + f"{statistics.median(ratios):.2f} [{' '.join(f'{r:.2f}' for r in ratios)}]".ljust(33)
              + f"{statistics.median(agains):.2f} [{' '.join(f'{r:.2f}' for r in agains)}]")
    print("\nload: a cookie not seen before (a full decode); again: the same cookie once more (what a browser"
          "\nsends on every request: a decoded-session cache, if the proxy has one, answers it). cookie: sealed"
          "\nbytes / number of cookies. Times: the fastest slice, per call. Ratios: per round the median of the"
          "\nratios of adjacent slices, then the median over rounds.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5,
                        help="seconds per round for all cases together (default 0.5)")
    main(parser.parse_args())
