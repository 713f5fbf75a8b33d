"""Header templates: what each upstream is told about the user, and what no claim or client can make of it."""

from __future__ import annotations

import base64

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.errors import ConfigError
from proxy.headers import HeaderPolicy
from proxy.identity import AppIdentity, all_names, app_identity, claim_paths, safe
from proxy.model import Identity, claim_text
from proxy.session import Session
from proxy.upstream.forward import Forwarder, Upstream
from tests.unit.conftest import make_config

IDENT = Identity(sub="alice", email="a@x.test", preferred_username="al", name="Alice Liddell", groups=("g1", "g2"),
                 claims=(("realm_access.roles", "admin,dev"), ("tenant", "acme")))
SESSION = Session(identity=IDENT, access_token="AT", created_at=0.0, id_token="IDT")


def compiled(**template) -> AppIdentity:
    return app_identity(make_config(identity_headers=template), None)


def items(template: dict, session: Session = SESSION) -> dict[str, str]:
    return dict(compiled(**template).items(session))


def test_default_is_todays_x_forwarded_and_bearer():
    assert items({}) == {"X-Forwarded-User": "alice", "X-Forwarded-Email": "a@x.test",
                         "X-Forwarded-Preferred-Username": "al", "X-Forwarded-Groups": "g1,g2",
                         "Authorization": "Bearer AT"}


def test_presets():
    assert items({"preset": "x-auth-request"}) == {
        "X-Auth-Request-User": "alice", "X-Auth-Request-Email": "a@x.test",
        "X-Auth-Request-Preferred-Username": "al", "X-Auth-Request-Groups": "g1,g2", "Authorization": "Bearer AT"}
    assert items({"preset": "x-auth-request", "access_token_header": "X-Auth-Request-Access-Token"})[
        "X-Auth-Request-Access-Token"] == "AT"
    assert items({"preset": "remote-user"}) == {"Remote-User": "alice", "Remote-Email": "a@x.test",
                                                "Remote-Name": "Alice Liddell", "Remote-Groups": "g1,g2",
                                                "Authorization": "Bearer AT"}
    assert items({"preset": "none", "pass_access_token": False}) == {}


def test_each_session_gets_its_own_users_headers_whatever_came_before():
    """The last identity rendered is kept by object, the others by value: alternating users, an equal
    identity in another object, and the same identity with new tokens each get their own headers."""
    template = compiled()
    bob = Session(identity=Identity(sub="bob", email="b@x.test", groups=("g3",)), access_token="BT", created_at=0.0)
    twin = Session(identity=Identity(**{f: getattr(IDENT, f) for f in IDENT.__dataclass_fields__}),
                   access_token="AT2", created_at=0.0)
    for session, user, token in [(SESSION, "alice", "AT"), (bob, "bob", "BT"), (SESSION, "alice", "AT"),
                                 (SESSION, "alice", "AT"), (twin, "alice", "AT2"), (bob, "bob", "BT")]:
        got = dict(template.items(session))
        assert (got["X-Forwarded-User"], got["Authorization"]) == (user, f"Bearer {token}")
        assert got["X-Forwarded-Groups"] == ",".join(session.identity.groups)


def test_basic_carries_the_user_and_moves_the_access_token():
    got = items({"preset": "basic"})
    assert got == {"Authorization": "Basic " + base64.b64encode(b"alice:").decode(), "X-Forwarded-Access-Token": "AT"}
    assert base64.b64decode(got["Authorization"].split()[1]).decode() == "alice:"
    other = items({"preset": "basic", "headers": {"Authorization": {"basic": "email"}}, "pass_access_token": False})
    assert other == {"Authorization": "Basic " + base64.b64encode(b"a@x.test:").decode()}


def test_basic_user_with_a_colon_is_not_sent():
    """"admin:x" would reach a basic-auth app as the user "admin"."""
    evil = Session(identity=Identity(sub="admin:x"), access_token="AT", created_at=0.0)
    assert "Authorization" not in items({"preset": "basic"}, evil)


def test_explicit_headers_claims_fixed_values_and_removal():
    got = items({"headers": {"X-Roles": "realm_access.roles", "X-Tenant": "tenant", "X-Fixed": {"value": "v 1"},
                             "X-Forwarded-Groups": None, "x-forwarded-user": "email", "X-Missing": "nope"}})
    assert got["X-Roles"] == "admin,dev" and got["X-Tenant"] == "acme" and got["X-Fixed"] == "v 1"
    assert "X-Forwarded-Groups" not in got and "X-Missing" not in got
    assert got["x-forwarded-user"] == "a@x.test" and "X-Forwarded-User" not in got     # replaced, one value


def test_id_token_only_when_asked_and_access_token_can_be_off():
    assert "IDT" not in str(items({}))
    assert items({"id_token_header": "X-Forwarded-Id-Token"})["X-Forwarded-Id-Token"] == "IDT"
    got = items({"pass_access_token": False, "id_token_header": "Authorization"})
    assert got["Authorization"] == "Bearer IDT" and "AT" not in got.values()
    no_id = Session(identity=IDENT, access_token="AT", created_at=0.0)
    assert "X-Forwarded-Id-Token" not in items({"id_token_header": "X-Forwarded-Id-Token"}, no_id)


@pytest.mark.parametrize("value", ["x\r\nX-Injected: 1", "x\nY", "x\x00", "a\u2028b", "a\u0085b", "admin\u200b",
                                   "\u202eadmin", "admin ", " admin", "\ud800", "tab\tbed"])
def test_unsafe_values_are_never_sent(value, caplog):
    assert not safe(value)
    evil = Session(identity=Identity(sub="alice", claims=(("c", value),)), access_token="AT", created_at=0.0)
    with caplog.at_level("INFO", "authproxy.upstream"):
        got = items({"headers": {"X-C": "c"}}, evil)
    assert "X-C" not in got
    assert "X-C not sent for user 'alice'" in caplog.text and value not in caplog.text


def test_text_beyond_latin1_goes_as_utf8_with_no_cr_or_lf_byte():
    from proxy.upstream.http1_pool import serialize_head

    # U+010D and U+050D end in 0x0D, U+010A in 0x0A: a sender that cut characters to one byte would split the field.
    value = "\u010d\u050d\u010a José 山田"
    ok = Session(identity=Identity(sub="alice", name=value), access_token="AT", created_at=0.0)
    got = items({"preset": "remote-user"}, ok)
    assert got["Remote-Name"] == value
    head = serialize_head("GET", "/", list(got.items()))
    assert head.count(b"\r") == head.count(b"\n") == len(got) + 2
    assert value.encode("utf-8") in head


def test_claim_text_of_claim_shapes():
    assert claim_text(["a", "b,c", 3, True, {"x": 1}, ["n"]]) == "a,3,true"
    assert claim_text(7) == "7" and claim_text(False) == "false" and claim_text({"a": 1}) is None
    assert claim_text("") is None and claim_text(None) is None and claim_text("a\r\nb") is None


def test_claims_are_kept_at_sign_in_and_survive_the_cookie():
    claims = {"sub": "alice", "realm_access": {"roles": ["admin", "dev"]}, "org.id": 42}
    ident = Identity.from_claims(claims, kept=("realm_access.roles", "org.id", "absent"))
    assert ident.claims == (("realm_access.roles", "admin,dev"), ("org.id", "42"))
    session = Session(identity=ident, access_token="AT", created_at=0.0)
    assert Session.from_bytes(session.to_bytes()) == session
    plain = Session(identity=Identity(sub="alice"), access_token="AT", created_at=0.0)
    assert b"claims" not in plain.to_bytes()               # sessions without kept claims are byte-for-byte as before


def test_claim_paths_and_names_cover_every_upstream():
    config = make_config(identity_headers={"headers": {"X-Roles": "realm_access.roles"}},
                         upstreams=[{"path": "/", "url": "http://127.0.0.1:9"},
                                    {"path": "/b", "url": "http://127.0.0.1:9",
                                     "identity_headers": {"preset": "remote-user", "headers": {"X-T": {"claim": "t"}}},
                                     "identity_assertion": {"header": "X-Authproxy-Assertion"}}])
    assert claim_paths(config) == ("realm_access.roles", "t")
    assert {"x-roles", "x-forwarded-user", "remote-user", "x-t", "x-authproxy-assertion",
            "authorization"} <= all_names(config)


def test_a_client_never_asserts_identity_with_any_upstreams_names():
    """A header only upstream /b sets is stripped from requests to / too, in any spelling."""
    config = make_config(upstreams=[{"path": "/", "url": "http://127.0.0.1:9"},
                                    {"path": "/b", "url": "http://127.0.0.1:9",
                                     "identity_headers": {"preset": "remote-user", "headers": {"X-Tenant": "t"}},
                                     "identity_assertion": {"header": "X-Authproxy-Assertion"}}])
    forged = [("Remote-User", "root"), ("remote_user", "root"), ("X_TENANT", "evil"), ("x-tenant", "evil"),
              ("X-Authproxy-Assertion", "forged"), ("X_Authproxy_Assertion", "forged"), ("X-App", "kept")]
    req = make_mocked_request("GET", "/x", headers=CIMultiDict(forged))
    for session in (SESSION, None):
        h = HeaderPolicy(config).request_headers(req, session)
        assert [k for k in h if k.lower().replace("_", "-") in
                {"remote-user", "x-tenant", "x-authproxy-assertion"}] == []
        assert h["X-App"] == "kept"


def test_forwarder_gives_each_upstream_its_own_template_and_assertion():
    config = make_config(upstreams=[{"path": "/", "url": "http://127.0.0.1:9"},
                                    {"path": "/b", "url": "http://127.0.0.1:8",
                                     "identity_headers": {"preset": "remote-user", "pass_access_token": False},
                                     "identity_assertion": {"header": "X-Authproxy-Assertion"}}])
    forwarder = Forwarder(config, [Upstream(u, None) for u in config.upstreams])   # type: ignore[arg-type]
    root, b = forwarder.route("/"), forwarder.route("/b/x")
    req = make_mocked_request("GET", "/b/x", headers=CIMultiDict())
    hb = forwarder.request_headers(req, SESSION, b)
    assert hb["Remote-User"] == "alice" and "Authorization" not in hb and hb["X-Authproxy-Assertion"].count(".") == 2
    hr = forwarder.request_headers(req, SESSION, root)
    assert hr["X-Forwarded-User"] == "alice" and "X-Authproxy-Assertion" not in hr


@pytest.mark.parametrize(("template", "where", "words"), [
    ({"preset": "shibboleth"}, "identity_headers.preset", "x-forwarded"),
    ({"headers": {"X User": "email"}}, "identity_headers.headers", "not a header name"),
    ({"headers": {"X_User": "email"}}, "identity_headers.headers", "'X-User'"),
    ({"headers": {"Host": "email"}}, "identity_headers.headers", "pick another name"),
    ({"headers": {"Cookie": {"value": "a=b"}}}, "identity_headers.headers", "pick another name"),
    ({"headers": {"Transfer-Encoding": "email"}}, "identity_headers.headers", "pick another name"),
    ({"headers": {"Connection": "email"}}, "identity_headers.headers", "pick another name"),
    ({"headers": {"X-Forwarded-For": "email"}}, "identity_headers.headers", "pick another name"),
    ({"headers": {"Sec-WebSocket-Key": "email"}}, "identity_headers.headers", "pick another name"),
    ({"headers": {"X-A": "a..b"}}, "identity_headers.headers['X-A']", "claim path"),
    ({"headers": {"X-A": {"value": "a\r\nb"}}}, "identity_headers.headers['X-A']", "printable"),
    ({"headers": {"X-A": {"value": "x", "claim": "y"}}}, "identity_headers.headers['X-A']", "{value"),
    ({"preset": "basic", "access_token_header": "Authorization"}, "identity_headers", "two values"),
    ({"access_token_header": "X-Forwarded-User"}, "identity_headers", "two values"),
    ({"id_token_header": "Proxy-Authorization"}, "identity_headers.id_token_header", "pick another name"),
])
def test_bad_templates_stop_start_up_naming_the_key_and_fix(template, where, words):
    with pytest.raises(ConfigError) as caught:
        make_config(identity_headers=template)
    assert where in str(caught.value) and words in str(caught.value)


def test_bad_assertions_stop_start_up():
    def upstream(**assertion):
        return [{"path": "/", "url": "http://127.0.0.1:9", "identity_assertion": assertion}]

    with pytest.raises(ConfigError, match=r"upstreams\[0\]\.identity_assertion\.header.*required"):
        make_config(upstreams=upstream())
    with pytest.raises(ConfigError, match=r"identity_assertion\.header.*already one of this upstream"):
        make_config(upstreams=upstream(header="X-Forwarded-Email"))
    with pytest.raises(ConfigError, match=r"identity_assertion\.lifetime.*1h"):
        make_config(upstreams=upstream(header="X-Assertion", lifetime="2h"))
    with pytest.raises(ConfigError, match=r"identity_assertion\.header"):
        make_config(upstreams=upstream(header="Host"))


def test_rendered_headers_are_kept_per_identity_and_follow_a_changed_one():
    template = compiled()
    assert dict(template.items(SESSION))["X-Forwarded-Email"] == "a@x.test"
    refreshed = Session(identity=Identity(sub="alice", email="new@x.test"), access_token="AT2", created_at=0.0)
    got = dict(template.items(refreshed))
    assert got["X-Forwarded-Email"] == "new@x.test" and got["Authorization"] == "Bearer AT2"
    assert "X-Forwarded-Groups" not in got
    unhashable = Session(identity=Identity(sub="bob", groups=["g"]), access_token="AT", created_at=0.0)  # type: ignore[arg-type]
    assert dict(template.items(unhashable))["X-Forwarded-Groups"] == "g"
    unhashable.identity.groups.append("h")              # type: ignore[attr-defined]
    assert dict(template.items(unhashable))["X-Forwarded-Groups"] == "g,h"   # rendered again, not kept
