"""The demo's application: a page with no login of its own that trusts the identity authproxy forwards.

It greets the user named in ``X-Forwarded-User`` / ``X-Forwarded-Email``, lists every header it received
(the Bearer token and cookie values shortened, so the page never shows a whole credential) and links to
authproxy's sign-out. Opened directly, without the proxy in front, it says so.
"""

from __future__ import annotations

from html import escape

from aiohttp import web

# Characters of a credential kept at each end when the page shows it.
SHOWN_CHARS = 8
# Headers whose values are credentials: shown shortened.
SECRET_HEADERS = frozenset({"authorization", "cookie"})

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>authproxy demo app</title>
<style>
 body{{font:16px/1.5 system-ui,sans-serif;background:#f4f5f7;color:#1d2330;margin:0;padding:2rem}}
 main{{background:#fff;max-width:56rem;margin:auto;padding:2rem;border-radius:10px;
      box-shadow:0 1px 3px rgba(0,0,0,.12)}}
 table{{border-collapse:collapse;width:100%;font-size:.9rem}}
 th,td{{text-align:left;vertical-align:top;padding:.25rem .5rem;border-bottom:1px solid #e5e7eb}}
 td{{font-family:ui-monospace,monospace;word-break:break-all}}
 a.button{{display:inline-block;padding:.5rem 1rem;border-radius:6px;background:#2456d3;color:#fff;
      text-decoration:none}}
 .note{{color:#6b7280}}
</style></head>
<body><main>
<h1 id="greeting">{greeting}</h1>
<p class="note">{note}</p>
<p>{action}</p>
<h2>Headers this app received</h2>
<table>{rows}</table>
</main></body></html>
"""


def shorten(value: str) -> str:
    """``Bearer abcdefgh…stuvwxyz (123 chars)``: enough to tell two tokens apart, never the whole."""
    scheme, _, credential = value.partition(" ") if value.lower().startswith("bearer ") else ("", "", value)
    if len(credential) <= 2 * SHOWN_CHARS:
        hidden = "…" if credential else ""
    else:
        hidden = f"{credential[:SHOWN_CHARS]}…{credential[-SHOWN_CHARS:]} ({len(credential)} chars)"
    return f"{scheme} {hidden}".strip()


def shorten_cookies(value: str) -> str:
    """Each cookie's name with its value shortened."""
    parts = []
    for part in value.split(";"):
        name, _, cookie_value = part.strip().partition("=")
        parts.append(f"{name}={shorten(cookie_value)}")
    return "; ".join(parts)


def shown_value(name: str, value: str) -> str:
    lower = name.lower()
    if lower == "cookie":
        return shorten_cookies(value)
    return shorten(value) if lower in SECRET_HEADERS else value


async def handle_page(request: web.Request) -> web.Response:
    user = request.headers.get("X-Forwarded-User")
    email = request.headers.get("X-Forwarded-Email")
    if user:
        name = request.headers.get("X-Forwarded-Preferred-Username") or user
        greeting = f"Hello, {name}!"
        note = (f"Signed in as {user}" + (f" ({email})" if email else "")
                + ". authproxy signed you in and told this app who you are; the app has no login of its own.")
        action = '<a class="button" href="/oauth2/sign_out">Sign out</a>'
    else:
        greeting = "Hello, stranger."
        note = ("No X-Forwarded-User header: this request did not come through authproxy. "
                "Open the proxy's address instead.")
        action = ""
    rows = "".join(f"<tr><th>{escape(key)}</th><td>{escape(shown_value(key, value))}</td></tr>"
                   for key, value in request.headers.items())
    body = _PAGE.format(greeting=escape(greeting), note=escape(note), action=action, rows=rows)
    return web.Response(text=body, content_type="text/html", headers={"Cache-Control": "no-store"})


def create_demo_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle_page)
    return app


async def start_demo_app(host: str, port: int) -> web.AppRunner:
    """Serve the demo app on ``host:port``; the caller cleans the runner up."""
    runner = web.AppRunner(create_demo_app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
