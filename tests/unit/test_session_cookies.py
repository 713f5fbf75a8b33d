"""``own_cookies`` reads the session cookies without parsing the whole header, and agrees with aiohttp."""

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.session import own_cookies

NAME = "_authproxy"


def request_with(cookie):
    return make_mocked_request("GET", "/", headers=CIMultiDict({"Cookie": cookie} if cookie is not None else {}))


@pytest.mark.parametrize("cookie", [
    None, "", "theme=dark", "_authproxy=1.abc-_DEF", "a=1; _authproxy=1.xyz; b=2", "_authproxy_0=1.aa; _authproxy_1=bb",
    "_authproxy=", "_authproxy=1.a; _authproxy=1.b", '_authproxy="1.a"', 'a="x; _authproxy=1.evil; b"',
    "_authproxy=1.a b", "_authproxyx=1.a", "_authproxy_x=1.a", "  _authproxy =  1.a  ;theme=dark", "_authproxy",
    "x_authproxy=1; _authproxy_02=1.c",
])
def test_agrees_with_aiohttps_parser(cookie):
    request = request_with(cookie)
    expected = {k: v for k, v in request.cookies.items()
                if k == NAME or (k.startswith(NAME + "_") and k[len(NAME) + 1:].isdigit())}
    found = own_cookies(request, NAME)
    assert {k: v for k, v in found.items() if k == NAME or k.startswith(NAME + "_")} == expected


def test_header_without_the_name_is_not_parsed():
    assert own_cookies(request_with("theme=dark; lang=en"), NAME) == {}
