"""Micro-benchmark: building the identity headers per request with a compiled template, against before.

Before header templates (issue 17), ``HeaderPolicy.request_items`` appended ``Authorization: Bearer`` and
the dict of ``headers.identity_headers(session)`` (four fixed ``X-Forwarded-*`` names). Now each upstream
has an ``identity.AppIdentity`` compiled at start-up, and ``items(session)`` builds its headers, checking
every value (``str.isprintable`` and outer spaces). Cases, per session, in µs:

- ``before``: what ``request_items`` did (``identity_headers`` + the Bearer item), the baseline;
- ``x-forwarded``: the default template, the same headers, for an identity seen before (the usual case:
  rendered headers are kept per ``Identity``);
- ``x-forwarded (uncached)``: the same, rendered afresh (a user's first request, or after a refresh);
- ``remote-user+2 claims``: the ``remote-user`` preset plus two claim-path headers;
- ``assertion (cached)``: ``x-forwarded`` plus an identity assertion reused from the signer's cache;
- ``assertion (signed)``: one ES256 signature (the cost once per session and half-lifetime);
- ``request_items``: the whole header policy for a browser-like request of ten fields, default template.

The machine is shared: cases alternate in short slices, several rounds; the median of per-round ratios
against ``before`` is printed, with the fastest slice's time.

    python bench/identity_headers.py [--rounds 5] [--seconds 0.3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.assertion import AssertionSigner
from proxy.config import parse_config
from proxy.headers import HeaderPolicy, identity_headers
from proxy.identity import app_identity
from proxy.model import Identity, Session

SECRET = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s="
BASE = {"public_url": "https://app.example.com",
        "provider": {"issuer": "https://idp.example.com", "client_id": "c", "client_secret": "s"},
        "cookie": {"secret": SECRET}}
SESSION = Session(identity=Identity(sub="248289761001", email="jane.doe@example.com", preferred_username="jane",
                                    name="Jane Doe", groups=("staff", "engineering", "on-call"),
                                    claims=(("realm_access.roles", "admin,dev"), ("tenant", "acme"))),
                  access_token="x" * 43, created_at=0.0, issued_at=0.0, id="sid")
BROWSER = CIMultiDict([("Host", "app.example.com"), ("User-Agent", "Mozilla/5.0"), ("Accept", "text/html"),
                       ("Accept-Language", "en"), ("Accept-Encoding", "gzip, br"), ("Connection", "keep-alive"),
                       ("Cookie", "__Host-authproxy=abc; theme=dark"), ("Sec-Fetch-Mode", "navigate"),
                       ("Sec-Fetch-Dest", "document"), ("Upgrade-Insecure-Requests", "1")])


def config(upstream: dict | None = None):
    return parse_config({**BASE, "upstreams": [{"path": "/", "url": "http://127.0.0.1:8080", **(upstream or {})}]},
                        source="<bench>", environ={})


def cases() -> dict[str, Callable[[], object]]:
    plain = config()
    default = app_identity(plain, plain.upstreams[0])
    remote_cfg = config({"identity_headers": {"preset": "remote-user",
                                              "headers": {"X-Roles": "realm_access.roles", "X-Tenant": "tenant"}}})
    remote = app_identity(remote_cfg, remote_cfg.upstreams[0])
    signed_cfg = config({"identity_assertion": {"header": "X-Authproxy-Assertion"}})
    signer = AssertionSigner(signed_cfg.cookie.keys, signed_cfg.public_url)
    signed = app_identity(signed_cfg, signed_cfg.upstreams[0], signer)
    counter = iter(range(10**12))
    policy = HeaderPolicy(plain)
    request = make_mocked_request("GET", "/x", headers=BROWSER)

    def before() -> object:
        return [("Authorization", f"Bearer {SESSION.access_token}"), *identity_headers(SESSION).items()]

    return {
        "before": before,
        "x-forwarded": lambda: default.items(SESSION),
        "x-forwarded (uncached)": lambda: (default._rendered.clear(), default.items(SESSION)),
        "remote-user+2 claims": lambda: remote.items(SESSION),
        "assertion (cached)": lambda: signed.items(SESSION),
        "assertion (signed)": lambda: signer.assertion(SESSION, "aud", 60 + next(counter)),   # a new key each time
        "request_items": lambda: policy.request_items(request, SESSION, None, default),
    }


def slice_time(fn: Callable[[], object], seconds: float) -> float:
    """µs per call over one slice."""
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(100):
            fn()
        n += 100
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.3)
    args = parser.parse_args()
    all_cases = cases()
    times: dict[str, list[float]] = {name: [] for name in all_cases}
    ratios: dict[str, list[float]] = {name: [] for name in all_cases}
    for _ in range(args.rounds):
        round_times = {name: slice_time(fn, args.seconds) for name, fn in all_cases.items()}
        for name, t in round_times.items():
            times[name].append(t)
            ratios[name].append(t / round_times["before"])
    print(f"{'case':24} {'µs (fastest)':>13} {'× before (median)':>18}")
    for name in all_cases:
        print(f"{name:24} {min(times[name]):13.2f} {statistics.median(ratios[name]):18.2f}")


if __name__ == "__main__":
    main()
