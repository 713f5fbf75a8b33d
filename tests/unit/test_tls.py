"""proxy/tls.py: the server context and its defaults, the reload decision, the redirect target; and the
``tls`` section's rules (public_url https, the redirect port)."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import ssl
from pathlib import Path

import pytest

from proxy.config import ListenTLSConfig, parse_config
from proxy.errors import ConfigError
from proxy.tls import CIPHERS, ListenerCertificate, check, context_problems, redirect_target
from tests.support.tls import LocalCA, replace
from tests.unit.test_config import minimal, problems


@pytest.fixture
def pair(tmp_path: Path) -> tuple[LocalCA, Path, Path]:
    ca = LocalCA(tmp_path)
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    ca.issue(cert, key, serial=7)
    return ca, cert, key


def settings(cert: Path, key: Path, **more) -> ListenTLSConfig:
    return ListenTLSConfig(cert_file=str(cert), key_file=str(key), **more)


def test_the_context_follows_mozilla_intermediate(pair):
    _, cert, key = pair
    context, found = context_problems(settings(cert, key))
    assert found == [] and context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION and context.options & ssl.OP_NO_TICKET
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == set(CIPHERS.split(":"))
    assert all(("GCM" in name or "CHACHA20" in name) and name.startswith("ECDHE") for name in tls12)
    only13, _ = context_problems(settings(cert, key, min_version="1.3"))
    assert only13 is not None and only13.minimum_version == ssl.TLSVersion.TLSv1_3


def test_problems_name_the_key_and_the_file(pair, tmp_path):
    ca, cert, key = pair
    other = tmp_path / "other"
    other.mkdir()
    ca.issue(other / "c.pem", other / "k.pem", serial=8)
    empty = tmp_path / "empty.pem"
    empty.write_text("")
    cases = [
        (settings(tmp_path / "nope.pem", key), "tls.cert_file", "cannot be read"),
        (settings(cert, tmp_path / "nope.key"), "tls.key_file", "cannot be read"),
        (settings(empty, key), "tls.cert_file", "no PEM certificate"),
        (settings(cert, empty), "tls.key_file", "no usable PEM private key"),
        (settings(cert, other / "k.pem"), "tls.key_file", "is not the private key"),
        (settings(cert, key, client_ca_file=str(empty)), "tls.client_ca_file", "no PEM certificate"),
        (settings(cert, key, client_ca_file=str(tmp_path / "no-ca.pem")), "tls.client_ca_file", "cannot be read"),
    ]
    for case, path, fragment in cases:
        context, found = context_problems(case)
        assert context is None and [p.path for p in found] == [path]
        assert fragment in found[0].message
        assert any(str(name) in found[0].message for name in (case.cert_file, case.key_file, case.client_ca_file))


def test_check_raises_a_config_error_and_passes_a_config_without_tls(pair, tmp_path):
    _, cert, _ = pair
    config = parse_config({**minimal(), "tls": {"cert_file": str(cert), "key_file": str(tmp_path / "x")}})
    with pytest.raises(ConfigError, match=r"tls\.key_file"):
        check(config, "test.yaml")
    plain = parse_config(minimal())
    assert check(plain) is plain


def test_tls_needs_an_https_public_url_and_its_own_redirect_port():
    tls = {"cert_file": "/c", "key_file": "/k"}
    found = problems({**minimal(), "public_url": "http://app.example.com", "tls": tls})
    assert "https://" in found["public_url"]
    found = problems({**minimal(), "listen": "0.0.0.0:8443", "tls": {**tls, "redirect_http_listen": "0.0.0.0:8443"}})
    assert "another port" in found["tls.redirect_http_listen"]
    found = problems({**minimal(), "tls": {**tls, "redirect_http_listen": "nowhere"}})
    assert "host:port" in found["tls.redirect_http_listen"]
    found = problems({**minimal(), "tls": {**tls, "min_version": "1.1"}})
    assert "tls.min_version" in found
    found = problems({**minimal(), "tls": {"cert_file": "/c"}})
    assert "tls.key_file" in found


def test_reload_only_on_change_and_never_to_a_broken_pair(pair, tmp_path, caplog):
    ca, cert, key = pair
    listener = ListenerCertificate(settings(cert, key))
    first = listener.current
    assert listener.context is first and listener.reload_if_changed() is False
    other = tmp_path / "other"
    other.mkdir()
    ca.issue(other / "c.pem", other / "k.pem", serial=9)
    replace(key, (other / "k.pem").read_bytes())                      # the key first: a mismatch for now
    with caplog.at_level(logging.ERROR, logger="authproxy"):
        assert listener.reload_if_changed() is False
        assert listener.reload_if_changed() is False                  # the same files: logged once
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "tls.key_file" in errors[0] and str(key) in errors[0]
    assert listener.current is first
    replace(cert, (other / "c.pem").read_bytes())                     # then the certificate: a good pair
    assert listener.reload_if_changed() is True
    assert listener.current is not first and listener.context is first   # the listener's context stays
    assert listener.current.sni_callback is not None


def test_a_pair_that_cannot_be_served_at_start_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"tls\.cert_file"):
        ListenerCertificate(settings(tmp_path / "none.pem", tmp_path / "none.key"))


@pytest.mark.parametrize("public_url,host,path,expected", [
    ("https://app.example.com", "app.example.com", "/a?b=%2F", "https://app.example.com/a?b=%2F"),
    ("https://app.example.com", "APP.example.com:80", "/a", "https://app.example.com/a"),
    ("https://app.example.com", "app.example.com.", "/a", "https://app.example.com/a"),
    ("https://app.example.com:8443", "app.example.com", "/", "https://app.example.com:8443/"),
    ("https://[::1]:8443", "[::1]:8080", "/x", "https://[::1]:8443/x"),
    ("https://app.example.com", "evil.example", "/a", None),
    ("https://app.example.com", "app.example.com.evil.example", "/a", None),
    ("https://app.example.com", "evil.example@app.example.com", "/a", None),
    ("https://app.example.com", "app.example.com/evil", "/a", None),
    ("https://app.example.com", "", "/a", None),
    ("https://app.example.com", None, "/a", None),
    ("https://app.example.com", "app.example.com", "//evil.example/a", "https://app.example.com/"),
    ("https://app.example.com", "app.example.com", "http://evil.example/a", "https://app.example.com/"),
])
def test_redirect_target_never_leaves_public_url(public_url, host, path, expected):
    config = parse_config({**minimal(), "public_url": public_url})
    assert redirect_target(config, host, path) == expected


@pytest.mark.parametrize("days,level,fragment", [
    (60, logging.INFO, "valid until"),
    (2, logging.WARNING, "expires in 2.0 days"),
    (-1, logging.WARNING, "not valid now"),
])
def test_the_certificate_served_is_described_and_its_expiry_warned(pair, tmp_path, caplog, days, level, fragment):
    ca, _, _ = pair
    cert, key = tmp_path / "e.pem", tmp_path / "e.key"
    ca.issue(cert, key, serial=0xABC, not_after=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days))
    with caplog.at_level(logging.INFO, logger="authproxy"):
        ListenerCertificate(settings(cert, key))
    (record,) = [r for r in caplog.records if "abc" in r.getMessage()]
    assert record.levelno == level and fragment in record.getMessage() and str(cert) in record.getMessage()


async def test_the_swap_works_on_asyncios_own_loop_too(pair):
    """``python -m proxy`` runs uvloop (the integration tests); the same listener on asyncio's loop, in-process."""
    from aiohttp import web

    from tests.support.ports import free_port
    from tests.support.tls import serial_of

    ca, cert, key = pair
    listener = ListenerCertificate(settings(cert, key))
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=listener.context).start()

    async def served() -> tuple[int, asyncio.StreamWriter]:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ca.client_context())
        return serial_of(writer.get_extra_info("ssl_object").getpeercert(True)), writer

    try:
        before, kept = await served()
        ca.issue(cert, key, serial=8)
        assert listener.reload_if_changed()
        after, fresh = await served()
        assert (before, after) == (7, 8)
        assert serial_of(kept.get_extra_info("ssl_object").getpeercert(True)) == 7
        for writer in (kept, fresh):
            writer.close()
    finally:
        await runner.cleanup()


def test_a_rewrite_in_place_is_seen_whatever_the_timestamps(pair, tmp_path):
    """Contents, not inode/size/mtime: a same-size rewrite within one timestamp tick is a change too."""
    ca, cert, key = pair

    def padded(data: bytes) -> bytes:                             # every file the same size (PEM allows the padding)
        return data + b"\n" * (2048 - len(data))

    for path in (cert, key):
        path.write_bytes(padded(path.read_bytes()))
    listener = ListenerCertificate(settings(cert, key))
    other = tmp_path / "other"
    other.mkdir()
    ca.issue(other / "c.pem", other / "k.pem", serial=9)
    stamps = [(p.stat().st_mtime_ns, p.stat().st_ino, p.stat().st_size) for p in (cert, key)]
    key.write_bytes(padded((other / "k.pem").read_bytes()))
    cert.write_bytes(padded((other / "c.pem").read_bytes()))
    for path, (mtime, _, _) in zip((cert, key), stamps, strict=True):
        os.utime(path, ns=(mtime, mtime))                       # as if written within the same tick
    assert [(p.stat().st_mtime_ns, p.stat().st_ino, p.stat().st_size) for p in (cert, key)] == stamps
    assert listener.reload_if_changed() is True
