"""The proxy's own answers: small HTML pages for people, JSON for API clients.

Every page says what happened in one sentence, what the user can do (a hint and one or two links),
and the request id that also stands in the operator's log line, so a support request can be
matched to its cause.

Your own page: put an ``error.html`` in ``templates_dir`` and it is used for every page instead of
the built-in one. It is read once, at the first page shown (restart to pick up a change), and
filled in with ``string.Template`` placeholders (``$name`` or ``${name}``; ``$$`` is a literal
``$``; a placeholder not in this list is left as it is):

- ``$status``      the HTTP status, e.g. ``403``
- ``$label``       the status as shown above the heading: the number for errors, empty otherwise
- ``$title``       the one-line heading, e.g. ``Access denied``
- ``$message``     the sentence saying what happened
- ``$hint``        what the user can do about it
- ``$request_id``  the id to quote to the operator
- ``$actions``     the links (``<a href=…>…</a>``), the first one the main action

Every value is HTML-escaped (``$actions`` is markup built from escaped labels and URLs), so a
template needs no escaping of its own. A template that cannot be read is logged and the built-in
page is used.

``error.html`` must be a regular file inside ``templates_dir``: a symbolic link pointed at
``/proc/self/environ`` once put the process's environment, ``COOKIE_SECRET`` included, into every
error page. A link that leads out of the directory is refused by the configuration check
(``config.template_problem``) and again when the page is read; links that stay inside (a Kubernetes
ConfigMap volume's) are followed. The file is opened at its resolved path with ``O_NOFOLLOW`` and
checked on the open descriptor, so what is read is the regular file that was checked.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import stat
from html import escape
from string import Template

from aiohttp import web

from .config import TEMPLATE_NAME, template_problem

log = logging.getLogger("authproxy.pages")

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
# Largest template read; a bigger file is surely not an error page.
MAX_TEMPLATE_BYTES = 256 * 1024

# What a user can do, by status, when the caller gives no hint of its own.
HINTS = {
    400: "Go back to the application and try again.",
    401: "Sign in to continue.",
    403: "If you think you should have access, ask the application's administrator and quote the request id below.",
    404: "Check the address, or go back to the application's start page.",
    502: "Try again in a moment. If it keeps happening, tell the administrator and quote the request id below.",
    503: "Try again in a minute or two. If it keeps happening, tell the administrator and quote the request id below.",
    504: "Try again in a moment. If it keeps happening, tell the administrator and quote the request id below.",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>$status $title</title>
<style>
 body{font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f4f5f7;color:#1d2330;
      margin:0;display:flex;min-height:100vh;align-items:center;justify-content:center}
 main{background:#fff;max-width:34rem;margin:1rem;padding:2rem 2.25rem;border-radius:10px;
      box-shadow:0 1px 3px rgba(0,0,0,.12)}
 .status{color:#6b7280;font-size:.85rem;letter-spacing:.05em;text-transform:uppercase}
 h1{font-size:1.35rem;margin:.25rem 0 1rem}
 .hint{color:#374151}
 .actions a{display:inline-block;margin:.75rem .75rem 0 0;padding:.5rem 1rem;border-radius:6px;
      background:#2456d3;color:#fff;text-decoration:none}
 .actions a.secondary{background:#e5e7eb;color:#1d2330}
 .actions a:focus-visible{outline:3px solid #93b4f5;outline-offset:2px}
 .rid{margin-top:1.5rem;color:#6b7280;font-size:.8rem}
 @media (prefers-color-scheme:dark){body{background:#111318;color:#e5e7eb}main{background:#1c1f26}
      .hint{color:#c9cdd4}.actions a.secondary{background:#374151;color:#e5e7eb}}
</style></head>
<body><main>
<div class="status">$label</div>
<h1>$title</h1>
<p>$message</p>
<p class="hint">$hint</p>
<div class="actions">$actions</div>
<p class="rid">Request id: <code>$request_id</code></p>
</main></body></html>
"""
_BUILT_IN = Template(_PAGE)


def html_page(status: int, title: str, message: str, request_id: str,
              actions: list[tuple[str, str]] | None = None,
              headers: dict[str, str] | None = None, *, hint: str | None = None,
              templates_dir: str | None = None) -> web.Response:
    """An HTML page; ``actions`` are (label, href) links, the first one styled as the main action.

    ``templates_dir`` is ``Config.templates_dir``: its ``error.html``, if there is one, replaces the
    built-in page (see the module docstring).
    """
    links = "".join(
        f'<a href="{escape(href)}"{"" if i == 0 else " class=secondary"}>{escape(label)}</a>'
        for i, (label, href) in enumerate(actions or []))
    hint = HINTS.get(status, "") if hint is None else hint
    template = (load_template(templates_dir) if templates_dir else None) or _BUILT_IN
    body = template.safe_substitute(status=str(status), label=str(status) if status >= 400 else "",
                                    title=escape(title), message=escape(message),
                                    hint=escape(hint), actions=links, request_id=escape(request_id))
    return web.Response(status=status, text=body, content_type="text/html",
                        headers={**NO_STORE, **(headers or {})})


@functools.lru_cache(maxsize=8)
def load_template(templates_dir: str) -> Template | None:
    """``templates_dir/error.html`` as a Template; None if there is none or it may not be used."""
    path = os.path.join(templates_dir, TEMPLATE_NAME)
    problem = template_problem(templates_dir)
    if problem is not None:
        log.warning("error page template not used: %s", problem)
        return None
    try:
        fd = os.open(os.path.realpath(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:                     # ELOOP: replaced by a symbolic link since the check
        log.warning("error page template %s not used: %s", path, exc.strerror)
        return None
    try:
        with open(fd, encoding="utf-8") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                log.warning("error page template %s not used: not a regular file", path)
                return None
            text = file.read(MAX_TEMPLATE_BYTES + 1)
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("error page template %s not used: %s", path, exc)
        return None
    if len(text) > MAX_TEMPLATE_BYTES:
        log.warning("error page template %s not used: larger than %d bytes", path, MAX_TEMPLATE_BYTES)
        return None
    return Template(text)


def json_answer(status: int, payload: dict[str, object], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(payload), content_type="application/json",
                        headers={**NO_STORE, **(headers or {})})
