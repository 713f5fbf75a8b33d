"""Refreshing access tokens (RFC 6749 §6) exactly once per session and expiry.

Providers that rotate refresh tokens (RFC 9700 §4.14.2) treat a second use of a spent refresh
token as theft and revoke the whole grant. So two requests of one session must never both
refresh. Three things make sure of it within a process:

1. **Single flight.** Refreshes are keyed by a hash of the refresh token being spent. The first
   request starts the refresh as a task; concurrent requests of the same session await that task
   (shielded, so a client hanging up cannot cancel a refresh others wait for).
2. **Recent results.** A request still carrying the pre-refresh cookie a moment later (another tab,
   a request that left before the new cookie arrived) finds the result in a short-lived cache keyed
   by the same hash, and gets the new cookie — it never presents the spent token (mod_auth_openidc
   keeps such results for 30 s too).
3. **Classified failures.** ``invalid_grant``/``invalid_client`` end the session; an unreachable or
   failing provider is transient: a still-valid access token keeps being used, an expired one gets
   a 503 until the provider is back.
4. **A grant once sent is seen through.** A slow provider may still hold our request in its queue
   when the request that started it gives up; it will then rotate the refresh token for us. So the
   grant is awaited to its end (up to ``GRANT_CAP``) by its task, not by the request: the request waits
   ``provider.timeout`` and gets its 503 (or keeps its still-valid token), and the result, when it
   comes, is kept for the session's later requests (``ABANDONED_TTL``). Sending the spent token again
   would be refused as reuse, and the user signed out. Only a grant that never reached the provider
   (no connection) fails early, and may be sent again.

With several processes sharing sessions, a lock spans them around the same steps: the Redis store's
(replicas, or workers with ``store: redis``), or with the cookie store and ``workers: N`` the host
coordinator's (``host.HostRefreshes``), whose store also holds each result, sealed, so a worker that
waited takes the other's new tokens instead of spending the rotated refresh token again. Only a
session due for refresh ever gets that far: the hot path is this module's ``due`` and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .crypto import fingerprint
from .errors import AccountRefused, ProviderError, ProviderUnavailable, SessionEnded, TokenValidationError
from .metrics import Metrics

if TYPE_CHECKING:
    from .host import HostRefreshes
    from .provider import Provider, TokenSet
    from .session import Identity, Session
    from .store import SessionStore

# How long a refresh result is served to requests that still carry the spent refresh token.
RECENT_TTL = 30.0
# Upper bound on remembered results, so a refresh storm across many sessions cannot grow memory.
RECENT_MAX = 10_000
# How many results found host-wide are followed (RT1 → RT2 → RT3) before refreshing from the last one.
HOPS = 3
# How long a refresh grant, once sent, is awaited before it counts as lost (aiohttp's total timeout);
# the request that started it waits only ``provider.timeout``. Locks around a refresh outlive it.
GRANT_CAP = 120.0
# How long a result that arrived after every request waiting for it gave up is served to the spent
# refresh token: the cookie store has no other place to keep it, and the user's next request may come
# minutes later (a tab reloaded after the 503). Tokens are bounded by RECENT_MAX like the rest.
ABANDONED_TTL = 3600.0
# Expired results are swept out at most this often (one pass over at most RECENT_MAX entries): without
# it they stayed until RECENT_MAX newer ones pushed them out, and a worker's memory grew for as long.
SWEEP_EVERY = 60.0


class _NoStore:
    """Refreshing without a shared store: no lock beyond the in-process single flight."""

    @contextlib.asynccontextmanager
    async def refresh_lock(self, session: Session) -> AsyncIterator[None]:
        yield

    async def reload(self, session: Session) -> Session | None:
        return session

    async def update(self, session: Session) -> None:
        return None


class Refresher:
    """Decides when a session's tokens are due and refreshes them once, sharing the result."""

    def __init__(self, provider: Provider, refresh_before: float, clock: Callable[[], float] = time.time,
                 metrics: Metrics | None = None, store: SessionStore | None = None,
                 host: HostRefreshes | None = None, wait: float | None = None) -> None:
        self._provider = provider
        self._wait = wait if wait is not None else provider.config.timeout   # a request's patience
        self._store: SessionStore | _NoStore = store or _NoStore()
        self._host = host
        self._metrics = metrics or Metrics()
        self._refresh_before = refresh_before
        self._clock = clock
        self._inflight: dict[str, asyncio.Task[Session]] = {}
        self._recent: OrderedDict[str, tuple[float, Session]] = OrderedDict()
        self._next_sweep = float("-inf")

    def due(self, session: Session, now: float) -> bool:
        """Whether to refresh now: within ``refresh_before`` of expiry, but never earlier than half
        the token's lifetime, so short-lived tokens are not refreshed on every request."""
        if session.expires_at is None or not session.refresh_token:
            return False
        window = self._refresh_before
        if session.issued_at is not None:
            window = min(window, (session.expires_at - session.issued_at) / 2)
        return now >= session.expires_at - window

    async def ensure_fresh(self, session: Session, *, remember_for: float = RECENT_TTL) -> Session:
        """The session to forward with: refreshed if due, else unchanged.

        ``remember_for`` is how long the result is served to the spent refresh token: a WebSocket
        refreshing in the background passes the session's remaining life, because the browser's
        cookie keeps the spent token until its next HTTP request.

        Raises ``SessionEnded`` when the user must sign in again and ``ProviderUnavailable`` when
        the token has expired and the provider cannot be reached to refresh it.
        """
        now = self._clock()
        if not self.due(session, now):
            return session
        try:
            return await self.refresh(session, remember_for=remember_for)
        except ProviderError as exc:
            sub = session.identity.sub
            if not exc.transient:      # invalid_grant, invalid_client, a malformed answer: start over
                self._metrics.refreshed("ended", sub, getattr(exc, "code", exc.detail))
                raise SessionEnded(str(exc)) from exc
            if not session.access_expired(self._clock()):
                self._metrics.refreshed("deferred", sub, exc.detail)   # still valid: retried on a later request
                return session
            self._metrics.refreshed("unavailable", sub, exc.detail)
            raise ProviderUnavailable("refresh", exc.detail) from exc
        except (TokenValidationError, AccountRefused) as exc:
            self._metrics.refreshed("ended", session.identity.sub, exc.code)
            raise SessionEnded(str(exc)) from exc

    async def refresh(self, session: Session, *, remember_for: float = RECENT_TTL) -> Session:
        latest, spent = self._latest_known(session)
        if latest is not session:
            if not self.due(latest, self._clock()):
                self._metrics.refreshes.labels("reused").inc()
                return latest
            session = latest               # refresh from the newest tokens known, never a spent one
        for _ in range(HOPS):              # a result found host-wide may itself be due by now: go on from it
            fresh = await self._single_flight(session, remember_for)
            if fresh.refresh_token == session.refresh_token or not self.due(fresh, self._clock()):
                break
            spent.append(fingerprint(session.refresh_token or ""))
            session = fresh
        now = self._clock()
        for old in spent:                  # path compression: every spent token now points at the newest
            self._remember(old, fresh, now, max(remember_for, self._ttl_left(old, now)))
        return fresh

    async def _single_flight(self, session: Session, remember_for: float) -> Session:
        assert session.refresh_token is not None
        key = fingerprint(session.refresh_token)
        task = self._inflight.get(key)
        if task is not None:
            self._metrics.refreshes.labels("shared").inc()
        else:
            task = asyncio.create_task(self._refresh(key, session, remember_for))
            self._inflight[key] = task
            task.add_done_callback(self._finished(key))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self._wait)
        except TimeoutError:
            # The task goes on (shielded) and keeps its result for the session's next request.
            raise ProviderError("refresh", f"no answer within {self._wait:g}s (still awaited)",
                                transient=True) from None

    def _finished(self, key: str) -> Callable[[asyncio.Task[Session]], None]:
        def done(task: asyncio.Task[Session]) -> None:
            self._inflight.pop(key, None)
            if not task.cancelled():
                task.exception()           # retrieved here: the callers that awaited it may be gone
        return done

    def _ttl_left(self, key: str, now: float) -> float:
        entry = self._recent.get(key)
        return entry[0] - now if entry else 0.0

    async def _refresh(self, key: str, session: Session, remember_for: float) -> Session:
        """lock → reload → still due? → refresh → save → unlock (the lock spans processes with Redis,
        or the host's workers with the coordinator, which also hands over the result)."""
        async with self._store.refresh_lock(session), self._host_lock(key):
            shared = await self._recall(key, session)
            if shared is not None:                  # another worker spent this token: take its result
                self._remember(key, shared, self._clock(), remember_for)
                self._metrics.refreshes.labels("reused").inc()
                return shared
            current = await self._store.reload(session)
            if current is None:
                raise SessionEnded("the session no longer exists in the store")
            if current.refresh_token != session.refresh_token and not self.due(current, self._clock()):
                self._remember(key, current, self._clock(), remember_for)   # another process refreshed it
                self._metrics.refreshes.labels("reused").inc()
                return current
            assert current.refresh_token is not None
            sent = asyncio.get_running_loop().time()      # monotonic: how long the grant took, not the time of day
            tokens = await self._provider.refresh(current.refresh_token, timeout=max(GRANT_CAP, self._wait))
            identity = await self._refreshed_identity(current, tokens)
            now = self._clock()
            if asyncio.get_running_loop().time() - sent >= self._wait:   # its requests gave up: keep it longer
                remember_for = max(remember_for, ABANDONED_TTL)
            fresh = replace(current, identity=identity, access_token=tokens.access_token, issued_at=now,
                            expires_at=tokens.expires_at, refresh_token=tokens.refresh_token or current.refresh_token,
                            id_token=tokens.id_token or current.id_token)
            await self._store.update(fresh)
            if self._host is not None:
                self._host.share(key, fresh, remember_for)
        self._remember(key, fresh, now, remember_for)
        self._metrics.refreshed("success", identity.sub)
        return fresh

    async def _recall(self, key: str, session: Session) -> Session | None:
        """Another worker's result for this refresh token, unless it is an older refresh of a token
        that does not rotate (then it is due again and this refresh is a new one)."""
        shared = await self._host.recall(key) if self._host is not None else None
        if shared is None or (shared.refresh_token == session.refresh_token and self.due(shared, self._clock())):
            return None
        return shared

    def _host_lock(self, key: str) -> contextlib.AbstractAsyncContextManager[object]:
        return self._host.lock(key) if self._host is not None else contextlib.nullcontext()

    async def _refreshed_identity(self, current: Session, tokens: TokenSet) -> Identity:
        """Who the refreshed tokens say the user is: the new ID token (OIDC Core §12.2: same iss and
        sub, no nonce needed) and, where claims come from userinfo (GitLab's groups, plain OAuth 2.0),
        userinfo again — which must answer for the same ``sub`` (OIDC Core §5.3.2), as at sign-in, or
        another account's claims (its groups) would be merged into this user's. A userinfo that cannot
        be reached keeps the identity as it was.

        An Entra ID token whose groups overflow again has them read from Graph again, so a group the user
        left is gone at the next refresh; a Graph that cannot be reached keeps the groups the session had
        (never none), one that refuses ends the session like a refused grant."""
        provider, sub = self._provider, current.identity.sub
        claims: dict[str, Any] = {}
        if tokens.id_token:
            claims = await provider.verify_id_token(tokens.id_token, nonce=None, expected_sub=sub)
        if provider.config.use_userinfo:
            try:
                info = await provider.userinfo(tokens.access_token)
            except ProviderError as exc:
                if not exc.transient:
                    raise
                return current.identity if not claims else provider.identity_from(claims)
            if provider.identity_from(info).sub != sub:      # the user id at the configured path: sub for OIDC
                raise TokenValidationError("userinfo_sub", "the userinfo answer is about another user")
            claims = {**info, **claims}
        if not claims:
            return current.identity
        keep_groups = False
        if provider.groups_overflowed(claims):
            try:
                claims = {**claims, "groups": await provider.overflowed_groups(tokens.access_token)}
            except ProviderError as exc:
                if not exc.transient:
                    raise
                keep_groups = True
        identity = provider.identity_from(claims)
        if identity.sub != sub:
            raise TokenValidationError("sub", "the refreshed tokens name another user")
        return replace(identity, groups=current.identity.groups) if keep_groups else identity

    async def newest(self, session: Session) -> Session:
        """``session`` with the newest tokens a refresh of it gave — in this process (within ``RECENT_TTL``)
        or, with ``workers: N``, in another worker of the host — keeping the later of the two last-seen
        times; ``session`` itself when none is known. Spends nothing."""
        latest = self._latest_known(session)[0]
        if latest is session and self._host is not None and session.refresh_token:
            latest = await self._recall(fingerprint(session.refresh_token), session) or session
        if latest is session:
            return session
        return replace(latest, last_seen=max(latest.last_active(), session.last_active()))

    def _latest_known(self, session: Session) -> tuple[Session, list[str]]:
        """Follow remembered results from this session's refresh token to the newest tokens
        (RT1 → (AT2, RT2) → (AT3, RT3)…), and the spent tokens' keys met on the way. Chains stay short:
        ``refresh`` points every key met straight at its result."""
        now, current = self._clock(), session
        spent: list[str] = []
        while current.refresh_token and len(spent) < RECENT_MAX:
            key = fingerprint(current.refresh_token)
            entry = self._recent.get(key)
            if entry is None or entry[0] <= now or entry[1] is current or key in spent:
                break
            spent.append(key)
            current = entry[1]
            if not self.due(current, now):
                break
        return current, spent

    def _remember(self, key: str, session: Session, now: float, remember_for: float) -> None:
        self._recent[key] = (now + remember_for, session)
        self._recent.move_to_end(key)
        if now >= self._next_sweep:               # entries live for 30 s to hours: not in expiry order
            self._next_sweep = now + SWEEP_EVERY
            for gone in [k for k, (until, _) in self._recent.items() if until <= now]:
                del self._recent[gone]
        while len(self._recent) > RECENT_MAX:
            self._recent.popitem(last=False)
