"""When to refresh, single flight, the recent-results cache, and failure classification."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from proxy.errors import ProviderError, ProviderUnavailable, SessionEnded, TokenRejected
from proxy.provider import TokenSet
from proxy.refresh import ABANDONED_TTL, GRANT_CAP, RECENT_TTL, Refresher
from proxy.session import Identity, Session


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeProvider:
    """Counts refresh grants; answers after a short pause so concurrent callers overlap."""

    def __init__(self, clock: Clock, *, fail: Exception | None = None, rotate: bool = True,
                 userinfo: dict | None = None, delay: float = 0.01) -> None:
        self.clock, self.fail, self.rotate, self.calls = clock, fail, rotate, []
        self.info, self.delay, self.timeouts = userinfo, delay, []
        self.config = type("ProviderConfig", (), {"use_userinfo": userinfo is not None, "timeout": 10.0})()

    async def userinfo(self, access_token: str) -> dict:
        return dict(self.info or {})

    def identity_from(self, claims: dict) -> Identity:
        return Identity.from_claims(claims)

    def groups_overflowed(self, claims: dict) -> bool:
        return False

    async def refresh(self, refresh_token: str, *, timeout: float | None = None) -> TokenSet:
        self.calls.append(refresh_token)
        self.timeouts.append(timeout)
        await asyncio.sleep(self.delay)
        if self.fail:
            raise self.fail
        n = len(self.calls)
        return TokenSet(access_token=f"AT{n}", expires_at=self.clock() + 300,
                        refresh_token=f"RT{n}" if self.rotate else None, id_token=None)


def session(clock: Clock, *, lifetime: float = 300, left: float = 300, rt: str | None = "RT0") -> Session:
    return Session(identity=Identity(sub="alice"), access_token="AT0", created_at=clock() - 10,
                   issued_at=clock() - (lifetime - left), expires_at=clock() + left, refresh_token=rt)


@pytest.mark.parametrize("lifetime,left,due", [
    (300, 120, False), (300, 61, False), (300, 60, True), (300, 0, True), (300, -5, True),
    (4, 2.5, False), (4, 2.0, True),        # short tokens: half the lifetime, not 60 s
])
def test_due_window(lifetime, left, due):
    clock = Clock()
    refresher = Refresher(FakeProvider(clock), refresh_before=60, clock=clock)
    assert refresher.due(session(clock, lifetime=lifetime, left=left), clock()) is due


def test_never_due_without_refresh_token_or_expiry():
    clock = Clock()
    refresher = Refresher(FakeProvider(clock), refresh_before=60, clock=clock)
    assert not refresher.due(session(clock, left=-1, rt=None), clock())
    no_expiry = Session(identity=Identity(sub="a"), access_token="x", created_at=0, refresh_token="r")
    assert not refresher.due(no_expiry, clock())


async def test_concurrent_callers_share_one_refresh():
    clock = Clock()
    provider = FakeProvider(clock)
    refresher = Refresher(provider, refresh_before=60, clock=clock)
    stale = session(clock, left=10)
    results = await asyncio.gather(*(refresher.ensure_fresh(stale) for _ in range(20)))
    assert provider.calls == ["RT0"]
    assert {r.access_token for r in results} == {"AT1"}
    assert results[0].refresh_token == "RT1" and results[0].created_at == stale.created_at


async def test_pre_refresh_session_gets_cached_result_until_ttl():
    clock = Clock()
    provider = FakeProvider(clock)
    refresher = Refresher(provider, refresh_before=60, clock=clock)
    stale = session(clock, left=10)
    first = await refresher.ensure_fresh(stale)
    clock.now += RECENT_TTL - 1
    assert (await refresher.ensure_fresh(stale)).access_token == first.access_token
    assert len(provider.calls) == 1
    clock.now += 2                                  # past the cache: the spent token would be sent again
    await refresher.ensure_fresh(stale)
    assert len(provider.calls) == 2


async def test_kept_refresh_token_when_not_rotated():
    clock = Clock()
    refresher = Refresher(FakeProvider(clock, rotate=False), refresh_before=60, clock=clock)
    fresh = await refresher.ensure_fresh(session(clock, left=10))
    assert fresh.refresh_token == "RT0" and fresh.access_token == "AT1"


async def test_invalid_grant_ends_session():
    clock = Clock()
    refresher = Refresher(FakeProvider(clock, fail=TokenRejected("refresh", "invalid_grant")), 60, clock)
    with pytest.raises(SessionEnded):
        await refresher.ensure_fresh(session(clock, left=10))


async def test_transient_failure_keeps_valid_token_and_503s_expired_one():
    clock = Clock()
    down = ProviderError("refresh", "could not connect", transient=True)
    refresher = Refresher(FakeProvider(clock, fail=down), 60, clock)
    still_valid = session(clock, left=10)
    assert await refresher.ensure_fresh(still_valid) is still_valid
    with pytest.raises(ProviderUnavailable) as info:
        await refresher.ensure_fresh(session(clock, left=-1))
    assert info.value.status == 503


async def test_malformed_answer_ends_session():
    clock = Clock()
    bad = ProviderError("refresh", "token_type is 'mac'")
    refresher = Refresher(FakeProvider(clock, fail=bad), 60, clock)
    with pytest.raises(SessionEnded):
        await refresher.ensure_fresh(session(clock, left=10))


async def test_not_due_is_untouched():
    clock = Clock()
    provider = FakeProvider(clock)
    s = session(clock)
    assert await Refresher(provider, 60, clock).ensure_fresh(s) is s and provider.calls == []


async def test_spent_token_follows_the_chain_to_the_newest_tokens():
    # A WebSocket refreshed twice in the background; the browser's cookie still holds RT0.
    clock = Clock()
    provider = FakeProvider(clock)
    refresher = Refresher(provider, refresh_before=60, clock=clock)
    cookie_session = session(clock, left=10)
    first = await refresher.ensure_fresh(cookie_session, remember_for=3600)          # RT0 -> RT1
    clock.now += 300
    second = await refresher.ensure_fresh(first, remember_for=3600)                  # RT1 -> RT2
    assert provider.calls == ["RT0", "RT1"]
    back = await refresher.ensure_fresh(cookie_session)                             # the browser returns
    assert back.access_token == second.access_token and provider.calls == ["RT0", "RT1"]
    clock.now += 300                                                                # and once RT2's token is due:
    newest = await refresher.ensure_fresh(cookie_session)
    assert provider.calls == ["RT0", "RT1", "RT2"] and newest.refresh_token == "RT3"


class OtherProcessStore:
    """A shared store in which another process already refreshed the session."""

    def __init__(self, current):
        self.current, self.locked, self.updated = current, 0, []

    def refresh_lock(self, s):
        import contextlib

        @contextlib.asynccontextmanager
        async def lock():
            self.locked += 1
            yield
        return lock()

    async def reload(self, s):
        return self.current

    async def update(self, s):
        self.updated.append(s)


async def test_refresh_under_lock_reuses_another_processes_result():
    clock = Clock()
    provider = FakeProvider(clock)
    stale = session(clock, left=10)
    theirs = Session(identity=stale.identity, access_token="AT-theirs", created_at=stale.created_at,
                     issued_at=clock(), expires_at=clock() + 300, refresh_token="RT-theirs")
    store = OtherProcessStore(theirs)
    refresher = Refresher(provider, 60, clock, store=store)
    assert (await refresher.ensure_fresh(stale)).access_token == "AT-theirs"
    assert provider.calls == [] and store.locked == 1 and store.updated == []


async def test_refresh_under_lock_saves_before_unlocking():
    clock = Clock()
    stale = session(clock, left=10)
    store = OtherProcessStore(stale)
    refresher = Refresher(FakeProvider(clock), 60, clock, store=store)
    fresh = await refresher.ensure_fresh(stale)
    assert store.updated == [fresh] and fresh.access_token == "AT1"


async def test_session_gone_from_store_ends_it():
    clock = Clock()
    refresher = Refresher(FakeProvider(clock), 60, clock, store=OtherProcessStore(None))
    with pytest.raises(SessionEnded):
        await refresher.ensure_fresh(session(clock, left=10))


async def test_long_chain_of_background_refreshes_never_spends_a_rotated_token():
    # A client that never updates its cookie (wrk in the refresh storm) across 30 expiries.
    clock = Clock()
    provider = FakeProvider(clock)
    refresher = Refresher(provider, refresh_before=60, clock=clock)
    stale_cookie = session(clock, left=10)
    current = stale_cookie
    for _ in range(30):
        current = await refresher.ensure_fresh(stale_cookie, remember_for=3600)
        clock.now += 300
    assert len(provider.calls) == 30 and len(set(provider.calls)) == 30     # each token spent once
    assert provider.calls[0] == "RT0" and current.refresh_token == "RT30"


async def test_failed_shared_refresh_leaves_no_unretrieved_exception():
    import gc
    loop = asyncio.get_running_loop()
    reported = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context.get("message")))
    try:
        clock = Clock()
        refresher = Refresher(FakeProvider(clock, fail=TokenRejected("refresh", "invalid_grant")), 60, clock)
        waiter = asyncio.ensure_future(refresher.ensure_fresh(session(clock, left=10)))
        await asyncio.sleep(0)
        waiter.cancel()                               # the only caller goes away (client hung up)
        await asyncio.sleep(0.05)                     # the refresh task fails with nobody awaiting it
        del waiter
        gc.collect()                                  # "Task exception was never retrieved" would come now
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []


async def test_refresh_takes_userinfo_claims_when_configured():
    # GitLab-style: groups come only from userinfo; a refresh must not drop them.
    clock = Clock()
    provider = FakeProvider(clock, userinfo={"sub": "alice", "groups": ["devs", "ops"]})
    fresh = await Refresher(provider, 60, clock).ensure_fresh(session(clock, left=10))
    assert fresh.identity.groups == ("devs", "ops")


async def test_refresh_naming_another_user_ends_the_session():
    clock = Clock()
    provider = FakeProvider(clock, userinfo={"sub": "mallory"})
    with pytest.raises(SessionEnded):
        await Refresher(provider, 60, clock).ensure_fresh(session(clock, left=10))


async def test_a_slow_grant_is_seen_through_and_its_result_kept_for_the_session():
    """The soak's lost sessions: the provider held our refresh grant longer than the request waited, then
    rotated the refresh token anyway. The request gets its 503; the grant goes on, and its result serves
    the session's next request, which must never send the spent token again."""
    clock = Clock()
    provider = FakeProvider(clock, delay=0.5)
    refresher = Refresher(provider, refresh_before=60, clock=clock, wait=0.1)
    expired = session(clock, left=-1)
    with pytest.raises(ProviderUnavailable):
        await refresher.ensure_fresh(expired)
    assert provider.calls == ["RT0"] and provider.timeouts[0] >= GRANT_CAP     # awaited far beyond the request
    with pytest.raises(ProviderUnavailable):                  # a request meanwhile joins the grant in flight
        await refresher.ensure_fresh(expired)
    assert provider.calls == ["RT0"]
    await asyncio.sleep(0.6)
    clock.now += RECENT_TTL + 60                              # the user comes back minutes later
    fresh = await refresher.ensure_fresh(replace(expired, expires_at=clock() - 1))
    assert fresh.access_token == "AT1" and fresh.refresh_token == "RT1"
    assert provider.calls == ["RT0"]                          # RT0 was never sent again
    clock.now += ABANDONED_TTL
    assert refresher._latest_known(expired)[0] is expired     # not kept for ever


async def test_a_still_valid_token_is_used_while_a_slow_grant_is_pending():
    clock = Clock()
    provider = FakeProvider(clock, delay=0.5)
    refresher = Refresher(provider, refresh_before=60, clock=clock, wait=0.1)
    due = session(clock, left=10)
    assert await refresher.ensure_fresh(due) is due           # deferred, not a 503
    await asyncio.sleep(0.6)
    assert (await refresher.ensure_fresh(due)).access_token == "AT1"
    assert provider.calls == ["RT0"]


async def test_newest_takes_a_recent_refresh_result_and_the_later_last_seen_spending_nothing():
    """What a cookie that only records a use (cookie.idle_timeout) goes out with: the tokens a concurrent
    refresh of the same session gave, never the spent refresh token, and the later of the two last-seen times."""
    clock = Clock()
    provider = FakeProvider(clock)
    refresher = Refresher(provider, 60, clock)
    stale = session(clock, left=10)
    fresh = await refresher.ensure_fresh(stale)
    touched = replace(stale, last_seen=clock() + 5)
    newest = await refresher.newest(touched)
    assert newest.refresh_token == fresh.refresh_token == "RT1" and newest.access_token == "AT1"
    assert newest.last_seen == clock() + 5
    unrelated = session(clock, rt="RT-other")
    assert await refresher.newest(unrelated) is unrelated
    assert provider.calls == ["RT0"]


def test_expired_results_are_swept_though_a_longer_one_came_first():
    """The soak (issue 19): results live 30 s to hours, so expired ones sat behind live ones until
    RECENT_MAX newer results pushed them out; a worker's memory grew for as long."""
    from proxy.refresh import SWEEP_EVERY
    clock = Clock()
    refresher = Refresher(FakeProvider(clock), refresh_before=60, clock=clock)
    s = session(clock)
    refresher._remember("websocket's", s, clock(), 3600.0)
    for i in range(50):
        refresher._remember(f"short-{i}", s, clock(), RECENT_TTL)
    clock.now += RECENT_TTL + SWEEP_EVERY
    refresher._remember("new", s, clock(), RECENT_TTL)
    assert list(refresher._recent) == ["websocket's", "new"]


class RaisingLevelProvider(FakeProvider):
    """A refresh answer that claims a stronger, newer sign-in: in its ID token and in userinfo (a provider
    that changed, or one an attacker answers for)."""

    async def refresh(self, refresh_token: str, *, timeout: float | None = None) -> TokenSet:
        tokens = await super().refresh(refresh_token, timeout=timeout)
        return TokenSet(access_token=tokens.access_token, expires_at=tokens.expires_at,
                        refresh_token=tokens.refresh_token, id_token="new.id.token")

    async def verify_id_token(self, token: str, *, nonce: str | None, expected_sub: str | None = None) -> dict:
        return {"sub": "alice", "acr": "urn:example:mfa", "auth_time": self.clock(), "amr": ["hwk"]}


@pytest.mark.parametrize("userinfo", [None, {"sub": "alice", "acr": "urn:example:mfa", "auth_time": 10**10}])
async def test_a_refresh_never_changes_how_the_session_signed_in(userinfo):
    clock = Clock()
    provider = RaisingLevelProvider(clock, userinfo=userinfo)
    for acr, auth_time in ((None, None), ("urn:example:pwd", clock() - 500)):
        stale = replace(session(clock, left=10), acr=acr, auth_time=auth_time)
        fresh = await Refresher(provider, 60, clock).ensure_fresh(stale)
        assert fresh.access_token != stale.access_token and fresh.id_token == "new.id.token"
        assert (fresh.acr, fresh.auth_time) == (acr, auth_time)
