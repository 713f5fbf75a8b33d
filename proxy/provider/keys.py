"""The provider's signing keys: the JWKS (RFC 7517), cached, and the choice of one key for a token.

``tokens.TokenValidator`` asks ``SigningKeys.key_for(kid, alg)`` for the key to check a signature with.
The JWKS is read when first needed and again after ``JWKS_TTL``; an unknown ``kid`` (a key rotation)
rereads it once, at most ``JWKS_REFETCH_BURST`` times a ``JWKS_REFETCH_WINDOW``, one read at a time,
so tokens with made-up kids cannot make us hammer the provider, while a real rotation is picked up by
the first login after it. Kept apart from the grants because its state (the keys, the rate limit) and
its concurrency (one lock, generations) are its own.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..errors import ProviderError, TokenValidationError
from .client import ProviderClient

# A JWKS is re-read after this long even if every kid is known, to pick up revoked keys.
JWKS_TTL = 3600.0
# An unknown kid refetches the JWKS once, then counts as unknown for this long; and at most
# JWKS_REFETCH_BURST refetches happen per JWKS_REFETCH_WINDOW whatever the kids. Forged tokens
# cannot cause a refetch storm, while a real key rotation is picked up by the first login after it.
JWKS_UNKNOWN_KID_TTL = 60.0
JWKS_REFETCH_BURST = 5
JWKS_REFETCH_WINDOW = 60.0
# With no keys at all, a JWKS that could not be read is tried again after this long, not per request.
JWKS_RETRY_AFTER = 1.0
# Unknown kids remembered before the expired ones are dropped.
_UNKNOWN_KIDS_KEPT = 1000
# Key types that can verify an asymmetric signature; symmetric ("oct") keys in a JWKS are ignored.
_KEY_TYPES_BY_ALG_PREFIX = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class SigningKeys:
    """The JWKS cache. ``jwks_uri`` is asked at each read: discovery may finish after construction."""

    def __init__(self, client: ProviderClient, jwks_uri: Callable[[], str | None], clock: Callable[[], float]) -> None:
        self._client = client
        self._jwks_uri = jwks_uri
        self._clock = clock
        self.keys: KeySet | None = None               # the last JWKS read, None before the first
        self.fetched_at = float("-inf")               # when it was last read (tried), by ``clock``
        self._lock = asyncio.Lock()
        self._generation = 0
        self._retry_at = float("-inf")
        self._refetches: deque[float] = deque()
        self._unknown_kids: dict[str | None, float] = {}

    async def key_for(self, kid: str | None, alg: str) -> Any:
        """The JWKS key for ``kid`` and ``alg``. The JWKS is read when first needed and after
        ``JWKS_TTL``; an unknown kid (a key rotation) rereads it once, rate-limited, so tokens with
        random kids cannot make us hammer the provider. Concurrent lookups share one read."""
        if self.keys is None or self._clock() - self.fetched_at >= JWKS_TTL:
            await self._reread(self._generation, rate_limited=False)
        generation = self._generation                # the keys this lookup saw
        key = self._find(kid, alg)
        if (key is None and self._unknown_kids.get(kid, float("-inf")) <= self._clock()
                and await self._reread(generation, rate_limited=True)):
            key = self._find(kid, alg)
            if key is None:
                self._remember_unknown(kid)
        if key is None:
            what = f"kid {kid[:40]!r}" if kid is not None else "no kid, and not exactly one key of its type"
            raise TokenValidationError("kid", f"no signing key of the provider fits ({what})")
        return key

    async def load(self) -> None:
        """Read the JWKS now (``--check-config --online``), whatever the cache holds."""
        await self._reread(self._generation, rate_limited=False)

    async def warm(self) -> None:
        """Read the JWKS now if it was never read (at start-up, so ``/ready`` can say the keys are there
        and the first sign-in need not wait for them); a ProviderError if it cannot be read."""
        if self.keys is None:
            await self._reread(self._generation, rate_limited=False)

    async def _reread(self, seen: int, *, rate_limited: bool) -> bool:
        """Read the JWKS unless someone did since generation ``seen``; False if the rate limit said no."""
        async with self._lock:
            if self._generation != seen:
                return True
            if rate_limited and not self._refetch_allowed():
                return False
            await self._fetch()
            return True

    def _refetch_allowed(self) -> bool:
        now = self._clock()
        while self._refetches and self._refetches[0] <= now - JWKS_REFETCH_WINDOW:
            self._refetches.popleft()
        if len(self._refetches) >= JWKS_REFETCH_BURST:
            return False
        self._refetches.append(now)
        return True

    def _remember_unknown(self, kid: str | None) -> None:
        now = self._clock()
        if len(self._unknown_kids) > _UNKNOWN_KIDS_KEPT:
            self._unknown_kids = {k: t for k, t in self._unknown_kids.items() if t > now}
        self._unknown_kids[kid] = now + JWKS_UNKNOWN_KID_TTL

    def _find(self, kid: str | None, alg: str) -> Any:
        """Key choice: by ``kid`` and the key type ``alg`` needs (an ES256 token never meets an RSA key),
        and the key's own ``alg`` if it names one (RFC 7517 §4.4); without a kid only when exactly one
        key fits. Two keys with one kid are no key at all: we never try keys in turn (a forged token
        would cost a verification per key) nor guess which the provider meant."""
        if self.keys is None:
            return None
        kty = _KEY_TYPES_BY_ALG_PREFIX.get(alg[:2])
        candidates = [k for k in self.keys.keys if k.key_type == kty and k.get("use") in (None, "sig")
                      and k.get("alg") in (None, alg)]
        if kid is not None:
            candidates = [k for k in candidates if k.kid == kid]
        return candidates[0] if len(candidates) == 1 else None

    async def _fetch(self) -> None:
        """One read of the JWKS (under ``_lock``). After a failure with no keys at all, the next
        read waits ``JWKS_RETRY_AFTER``, so requests during an outage do not each try again."""
        uri = self._jwks_uri()
        if not uri:
            raise ProviderError("jwks", "the provider publishes no jwks_uri")
        now = self._clock()
        if self.keys is None and now < self._retry_at:
            raise ProviderError("jwks", "the JWKS could not be read a moment ago", transient=True)
        self.fetched_at = now
        self._retry_at = now + JWKS_RETRY_AFTER
        doc = await self._client.get_json("jwks", uri)
        listed = doc.get("keys")
        raw_keys: list[Any] = listed if isinstance(listed, list) else []
        usable = [k for k in raw_keys if isinstance(k, dict) and k.get("kty") in ("RSA", "EC", "OKP")]
        try:
            self.keys = KeySet.import_key_set({"keys": usable})
        except (JoseError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ProviderError("jwks", f"the JWKS holds a key that cannot be read ({type(exc).__name__})") from None
        self._generation += 1
