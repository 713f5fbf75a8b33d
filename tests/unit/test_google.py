"""Google Workspace domains: the verified ID token's ``hd`` must be one of ``google_hosted_domains``."""

from __future__ import annotations

import pytest

from proxy.errors import AccountRefused, LoginError
from proxy.provider.google import check_hosted_domain

DOMAINS = ["example.com", "example.org"]


@pytest.mark.parametrize("hd", ["example.com", "example.org", "Example.COM"])
def test_an_account_of_a_listed_domain_passes(hd):
    check_hosted_domain({"sub": "1", "hd": hd}, DOMAINS)


@pytest.mark.parametrize(("claims", "code"), [
    ({"sub": "1", "email": "alice@example.com"}, "hd_missing"),            # personal account, work address
    ({"sub": "1", "hd": ""}, "hd_missing"),
    ({"sub": "1", "hd": ["example.com"]}, "hd_missing"),
    ({"sub": "1", "hd": "evil.example"}, "hd_other"),
    ({"sub": "1", "hd": "sub.example.com"}, "hd_other"),                    # a subdomain is another domain
    ({"sub": "1", "hd": "example.com.evil.example"}, "hd_other"),
])
def test_any_other_account_is_refused_with_a_403(claims, code):
    with pytest.raises(AccountRefused) as info:
        check_hosted_domain(claims, DOMAINS)
    assert info.value.code == code and info.value.status == 403 and isinstance(info.value, LoginError)
    assert "example.com, example.org" in str(info.value)


def test_no_domains_no_check():
    check_hosted_domain({"sub": "1"}, [])
