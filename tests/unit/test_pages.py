"""Tests for proxy.pages: the built-in page, a custom template, and what a template may not be."""

from __future__ import annotations

import os

import pytest

from proxy.pages import html_page, load_template


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
