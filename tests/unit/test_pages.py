"""Tests for proxy.pages: the built-in page, JSON answers, a custom template, and what a template may not be."""

from __future__ import annotations

import json
import os
from html import escape

import pytest

from proxy.pages import HINTS, MAX_TEMPLATE_BYTES, html_page, json_answer, load_template


@pytest.fixture(autouse=True)
def _fresh_cache():
    load_template.cache_clear()
    yield
    load_template.cache_clear()


def _page(templates_dir: str) -> str:
    response = html_page(500, "Broken", "It broke.", "rid-1", templates_dir=templates_dir)
    assert response.text is not None
    return response.text


def test_a_template_in_the_directory_is_used(tmp_path):
    (tmp_path / "error.html").write_text("<p>$status $message $request_id</p>")
    assert _page(str(tmp_path)) == "<p>500 It broke. rid-1</p>"


def test_a_link_out_of_the_directory_is_never_read(tmp_path, caplog, monkeypatch):
    # Passed the configuration check as a file, then swapped for a link to the secrets.
    secret = tmp_path / "secret.env"
    secret.write_text("COOKIE_SECRET=do-not-show-me")
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "error.html").symlink_to(secret)
    monkeypatch.setenv("AUTHPROXY_TEST_MARKER", "x")
    for target in (secret, "/proc/self/environ"):
        load_template.cache_clear()
        (pages / "error.html").unlink()
        (pages / "error.html").symlink_to(target)
        body = _page(str(pages))
        assert "do-not-show-me" not in body and "AUTHPROXY_TEST_MARKER" not in body
        assert "<h1>Broken</h1>" in body                       # the built-in page instead
    assert "outside the directory" in caplog.text


def test_a_fifo_does_not_hang_the_page(tmp_path):
    os.mkfifo(tmp_path / "error.html")
    assert "<h1>Broken</h1>" in _page(str(tmp_path))


# -- the built-in page and JSON answers ------------------------------------------------------------------


def test_the_built_in_page_escapes_every_value():
    response = html_page(403, "<b>Denied</b>", "You & <script>x()</script>", 'rid"><i>',
                         actions=[("Go <home>", '/start?a=1&b="x"')], hint="Ask <admin>")
    body = response.text
    assert "<script>" not in body and "<b>Denied" not in body and "<i>" not in body and "<home>" not in body
    assert "&lt;script&gt;" in body and "Ask &lt;admin&gt;" in body
    assert '<a href="/start?a=1&amp;b=&quot;x&quot;">Go &lt;home&gt;</a>' in body


def test_the_first_action_is_the_main_one():
    body = html_page(401, "Signed out", "m", "r", actions=[("Sign in", "/a"), ("Home", "/b"), ("Help", "/c")]).text
    assert '<a href="/a">Sign in</a><a href="/b" class=secondary>Home</a><a href="/c" class=secondary>Help</a>' in body


@pytest.mark.parametrize(("status", "hint"), sorted(HINTS.items()))
def test_each_error_status_has_a_default_hint(status, hint):
    body = html_page(status, "T", "m", "r").text
    assert f'<p class="hint">{escape(hint)}</p>' in body
    assert f'<div class="status">{status}</div>' in body


def test_a_page_that_is_not_an_error_shows_no_status_label_and_an_explicit_hint_wins():
    body = html_page(200, "Signed out", "You are signed out.", "r", hint="").text
    assert '<div class="status"></div>' in body and '<p class="hint"></p>' in body
    assert "<title>200 Signed out</title>" in body


def test_pages_and_json_are_never_stored_and_extra_headers_are_kept():
    page = html_page(401, "T", "m", "r", headers={"WWW-Authenticate": "Bearer", "Cache-Control": "no-cache"})
    assert page.status == 401 and page.content_type == "text/html"
    assert page.headers["Pragma"] == "no-cache" and page.headers["WWW-Authenticate"] == "Bearer"
    assert page.headers["Cache-Control"] == "no-cache"                # the caller's value wins
    answer = json_answer(401, {"error": "invalid_token", "request_id": "r"}, {"WWW-Authenticate": "Bearer"})
    assert answer.content_type == "application/json" and json.loads(answer.text) == {"error": "invalid_token",
                                                                                     "request_id": "r"}
    assert answer.headers["Cache-Control"] == "no-store" and answer.headers["WWW-Authenticate"] == "Bearer"


# -- what a template may and may not be --------------------------------------------------------------------


def test_a_directory_without_error_html_uses_the_built_in_page(tmp_path):
    assert "<h1>Broken</h1>" in _page(str(tmp_path))


def test_unknown_placeholders_stay_and_dollar_dollar_is_a_dollar(tmp_path):
    (tmp_path / "error.html").write_text("$title costs $$5 $unknown ${label}|$hint|$actions")
    body = html_page(404, "Gone", "m", "r", templates_dir=str(tmp_path)).text
    assert body.startswith("Gone costs $5 $unknown 404|Check the address")
    assert body.endswith("|")                                        # no actions: empty


@pytest.mark.parametrize("content", [b"\xff\xfe not UTF-8 $title", b"$title" + b" " * MAX_TEMPLATE_BYTES])
def test_an_unreadable_or_oversized_template_falls_back_to_the_built_in_page(tmp_path, caplog, content):
    (tmp_path / "error.html").write_bytes(content)
    assert "<h1>Broken</h1>" in _page(str(tmp_path))
    assert "not used" in caplog.text


def test_a_template_of_exactly_the_limit_is_used(tmp_path):
    (tmp_path / "error.html").write_text("$title".ljust(MAX_TEMPLATE_BYTES))
    assert _page(str(tmp_path)).startswith("Broken ")


def test_the_template_is_read_once_until_restart(tmp_path):
    (tmp_path / "error.html").write_text("first $title")
    assert _page(str(tmp_path)) == "first Broken"
    (tmp_path / "error.html").write_text("second $title")
    assert _page(str(tmp_path)) == "first Broken"


def test_a_directory_named_error_html_is_not_a_template(tmp_path):
    (tmp_path / "error.html").mkdir()
    assert "<h1>Broken</h1>" in _page(str(tmp_path))
