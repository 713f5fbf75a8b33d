"""The Session value: what it prints."""

from proxy.session import Identity, Session

NOW = 1_000_000.0


def session(**changes):
    base = dict(identity=Identity(sub="alice", email="a@x.test", preferred_username="alice", groups=("g1", "g2")),
                access_token="AT-secret", created_at=NOW - 10, expires_at=NOW + 300, refresh_token="RT-secret",
                id_token="ID-token")
    base.update(changes)
    return Session(**base)


def test_repr_hides_tokens():
    text = repr(session())
    assert "AT-secret" not in text and "RT-secret" not in text and "access_token=yes" in text
