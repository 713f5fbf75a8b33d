"""The Session value: what it prints."""

from tests.unit.conftest import make_session


def test_repr_hides_tokens():
    text = repr(make_session())
    assert "AT-secret" not in text and "RT-secret" not in text and "access_token=yes" in text
