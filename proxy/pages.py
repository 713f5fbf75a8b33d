"""The proxy's own answers: small HTML pages for people, JSON for API clients.

Every page says what happened in one sentence, what the user can do, and the request id that
also stands in the operator's log line, so a support request can be matched to its cause.
"""

from __future__ import annotations

import json
from html import escape

from aiohttp import web

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{status} {title}</title>
<style>
 body{{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f4f5f7;color:#1d2330;
      margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}}
 main{{background:#fff;max-width:34rem;margin:1rem;padding:2rem 2.25rem;border-radius:10px;
      box-shadow:0 1px 3px rgba(0,0,0,.12)}}
 .status{{color:#6b7280;font-size:.85rem;letter-spacing:.05em;text-transform:uppercase}}
 h1{{font-size:1.35rem;margin:.25rem 0 1rem}}
 .actions a{{display:inline-block;margin:.75rem .75rem 0 0;padding:.5rem 1rem;border-radius:6px;
      background:#2456d3;color:#fff;text-decoration:none}}
 .actions a.secondary{{background:#e5e7eb;color:#1d2330}}
 .rid{{margin-top:1.5rem;color:#6b7280;font-size:.8rem}}
</style></head>
<body><main>
<div class="status">{status}</div>
<h1>{title}</h1>
<p>{message}</p>
<div class="actions">{actions}</div>
<p class="rid">Request id: <code>{request_id}</code></p>
</main></body></html>
"""


def html_page(status: int, title: str, message: str, request_id: str,
              actions: list[tuple[str, str]] | None = None,
              headers: dict[str, str] | None = None) -> web.Response:
    """An HTML page; ``actions`` are (label, href) links, the first one styled as the main action."""
    links = "".join(
        f'<a href="{escape(href)}"{"" if i == 0 else " class=secondary"}>{escape(label)}</a>'
        for i, (label, href) in enumerate(actions or []))
    body = _PAGE.format(status=status, title=escape(title), message=escape(message), actions=links,
                        request_id=escape(request_id))
    return web.Response(status=status, text=body, content_type="text/html",
                        headers={**NO_STORE, **(headers or {})})


def json_answer(status: int, payload: dict[str, object], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(payload), content_type="application/json",
                        headers={**NO_STORE, **(headers or {})})
