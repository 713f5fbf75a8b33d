#!/usr/bin/env python3
"""Check the django-oauth-toolkit section of docs/providers.md against a real django-oauth-toolkit.

A virtualenv under ``~/.cache/authproxy-guides/dot`` (made once, ``pip install django-oauth-toolkit``) runs a
small Django site set up as the section says: ``oauth2_provider.urls`` under ``o/``, ``OIDC_ENABLED`` with an
RSA key, the scopes ``openid email profile``, a validator that adds ``email`` and ``preferred_username``,
RP-initiated logout on, and one confidential application (authorization code, RS256, the callback URL).
authproxy runs (``python -m proxy``) with the section's YAML, only the URLs, the client id and the secrets
changed, in front of an echo upstream. Then a user signs in through Django's login form, and the check asserts:

- the issuer is ``<base_url>/o`` (discovery answered for the preset's issuer, so the proxy became ready);
- the app sees ``X-Forwarded-User`` = the user's primary key, and the email and username the validator adds;
- after the access token's life is half gone, the next request refreshes it: a new access token reaches the
  app, for the same user;
- ``/oauth2/sign_out`` goes to DOT's end-session endpoint and the session is gone.

Everything listens on 127.0.0.1; bounded in time; stops what it started. Not part of ``python -m pytest``
(it installs Django and waits ~35 s for a refresh): run it when the preset or its section changes.

    python guides/dot_check.py
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from stack import Stack, run_bounded, wait_port, wait_ready  # noqa: E402

from tests.support.echo import header_values, start_echo  # noqa: E402
from tests.support.ports import free_port  # noqa: E402

DOC = REPO / "docs" / "providers.md"
CACHE = Path(os.environ.get("AUTHPROXY_GUIDES_CACHE", Path.home() / ".cache" / "authproxy-guides"))
TIME_LIMIT = 300.0
ACCESS_TOKEN_SECONDS = 60          # DOT's ACCESS_TOKEN_EXPIRE_SECONDS here: a refresh is due after half of it
CLIENT_ID = "authproxy-dot-check"
CLIENT_SECRET = "dot-check-" + base64.urlsafe_b64encode(os.urandom(18)).decode()
USERNAME, PASSWORD = "alice", "correct horse battery staple"


def venv() -> Path:
    root = CACHE / "dot"
    bin_dir = root / "bin"
    if not (bin_dir / ".installed").exists():
        print(f"dot_check: installing django-oauth-toolkit into {root} (once)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        subprocess.run([str(bin_dir / "pip"), "install", "-q", "django-oauth-toolkit"], check=True)
        (bin_dir / ".installed").write_text(time.strftime("%Y-%m-%d"))
    return bin_dir


def section_yaml() -> dict:
    """The first ```yaml block of the django-oauth-toolkit section."""
    text = DOC.read_text()
    start = text.index("\n## django-oauth-toolkit\n")
    end = text.find("\n## ", start + 1)
    (block, *_) = re.findall(r"```yaml\n(.*?)```", text[start:end], flags=re.S)
    return dict(yaml.safe_load(block))


SETTINGS = """\
from pathlib import Path
HERE = Path(__file__).resolve().parent
SECRET_KEY = "dot-check-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions",
                  "oauth2_provider"]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware", "django.middleware.csrf.CsrfViewMiddleware",
              "django.contrib.auth.middleware.AuthenticationMiddleware"]
ROOT_URLCONF = "dotsite.urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [HERE / "templates"],
              "APP_DIRS": True, "OPTIONS": {"context_processors": ["django.template.context_processors.request"]}}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": HERE.parent / "db.sqlite3"}}
LOGIN_URL = "/accounts/login/"
USE_TZ = True
OAUTH2_PROVIDER = {
    "OIDC_ENABLED": True,
    "OIDC_RSA_PRIVATE_KEY": (HERE / "oidc.key").read_text(),
    "OIDC_RP_INITIATED_LOGOUT_ENABLED": True,
    "SCOPES": {"openid": "OpenID Connect", "email": "Your email", "profile": "Your profile"},
    "ACCESS_TOKEN_EXPIRE_SECONDS": %(ttl)d,
    "OAUTH2_VALIDATOR_CLASS": "dotsite.validator.Validator",
}
"""

URLS = """\
from django.contrib.auth import views
from django.urls import include, path
urlpatterns = [
    path("o/", include("oauth2_provider.urls", namespace="oauth2_provider")),
    path("accounts/login/", views.LoginView.as_view()),
]
"""

VALIDATOR = """\
from oauth2_provider.oauth2_validators import OAuth2Validator
class Validator(OAuth2Validator):
    def get_additional_claims(self, request):
        return {"email": request.user.email, "preferred_username": request.user.username}
"""

LOGIN_TEMPLATE = """\
<form method="post">{% csrf_token %}{{ form.as_p }}<input type="hidden" name="next" value="{{ next }}">
<button type="submit">Sign in</button></form>
"""

SETUP = """\
import django; django.setup()
from django.contrib.auth.models import User
from oauth2_provider.models import Application
user = User.objects.create_user(%(username)r, "alice@example.test", %(password)r)
Application.objects.create(name="authproxy", client_id=%(client_id)r, client_secret=%(client_secret)r,
    client_type="confidential", authorization_grant_type="authorization-code",
    redirect_uris=%(redirect)r, post_logout_redirect_uris=%(signed_out)r, algorithm="RS256",
    skip_authorization=True, user=user)
print(user.pk)
"""


def make_site(root: Path, bin_dir: Path, public: str) -> tuple[dict[str, str], str]:
    """The Django project under ``root``; its environment, and the user's primary key."""
    site = root / "dotsite"
    (site / "templates" / "registration").mkdir(parents=True)
    (site / "__init__.py").write_text("")
    (site / "settings.py").write_text(SETTINGS % {"ttl": ACCESS_TOKEN_SECONDS})
    (site / "urls.py").write_text(URLS)
    (site / "validator.py").write_text(VALIDATOR)
    (site / "templates" / "registration" / "login.html").write_text(LOGIN_TEMPLATE)
    key = subprocess.run(["openssl", "genrsa", "2048"], check=True, capture_output=True, text=True).stdout
    (site / "oidc.key").write_text(key)
    env = {**os.environ, "PYTHONPATH": str(root), "DJANGO_SETTINGS_MODULE": "dotsite.settings"}
    subprocess.run([str(bin_dir / "django-admin"), "migrate", "-v", "0"], check=True, env=env, cwd=root)
    setup = SETUP % {"username": USERNAME, "password": PASSWORD, "client_id": CLIENT_ID,
                     "client_secret": CLIENT_SECRET, "redirect": public + "/oauth2/callback",
                     "signed_out": public + "/oauth2/signed_out"}
    pk = subprocess.run([str(bin_dir / "python"), "-c", setup], check=True, env=env, cwd=root,
                        capture_output=True, text=True).stdout.strip()
    return env, pk


def check(condition: bool, what: str) -> None:
    print(("ok    " if condition else "FAIL  ") + what, flush=True)
    if not condition:
        raise SystemExit(1)


async def sign_in(client: aiohttp.ClientSession, start: str) -> aiohttp.ClientResponse:
    """Through the proxy to Django's login form, the form filled in, and back to the app."""
    async with client.get(start, headers={"Accept": "text/html"}) as form_page:
        html = await form_page.text()
        check(form_page.status == 200 and urlsplit(str(form_page.url)).path == "/accounts/login/",
              f"the sign-in reaches DOT's login page ({form_page.status} {form_page.url})")
        action = str(form_page.url)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    nxt = re.search(r'name="next" value="([^"]*)"', html)
    assert token is not None and nxt is not None
    form = {"csrfmiddlewaretoken": token[1], "username": USERNAME, "password": PASSWORD,
            "next": nxt[1].replace("&amp;", "&")}
    return await client.post(action, data=form, headers={"Accept": "text/html", "Referer": action})


async def main() -> None:
    bin_dir = venv()
    async with Stack() as stack:
        dot_port, proxy_port = free_port(), free_port()
        base, public = f"http://127.0.0.1:{dot_port}", f"http://127.0.0.1:{proxy_port}"
        env, pk = make_site(stack.root, bin_dir, public)
        django = await stack.spawn("django", [str(bin_dir / "django-admin"), "runserver", "--noreload",
                                              f"127.0.0.1:{dot_port}"], cwd=stack.root, env=env)
        await wait_port(dot_port, django, "django")
        echo = await start_echo(free_port())
        try:
            config = section_yaml()
            config["public_url"] = public
            config["listen"] = f"127.0.0.1:{proxy_port}"
            config["provider"].update(base_url=base, client_id=CLIENT_ID)
            config["cookie"]["secure"] = False
            config["upstreams"] = [{"path": "/", "url": echo.url}]
            config["authorization"] = {"allowed_users": [pk]}
            path = stack.root / "authproxy.yaml"
            path.write_text(yaml.safe_dump(config))
            proxy = await stack.spawn("authproxy", [sys.executable, "-m", "proxy", "--config", str(path)], cwd=REPO,
                                      env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                                           "CLIENT_SECRET": CLIENT_SECRET,
                                           "COOKIE_SECRET": base64.urlsafe_b64encode(os.urandom(32)).decode()})
            await wait_ready(public + "/ready", proxy, "authproxy")
            await run_checks(base, public, pk, echo)
        finally:
            await echo.close()


async def run_checks(base: str, public: str, pk: str, echo) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        async with client.get(base + "/o/.well-known/openid-configuration") as resp:
            issuer = (await resp.json())["issuer"]
        check(issuer == base + "/o", f"DOT's issuer is <base_url>/o ({issuer})")
        async with await sign_in(client, public + "/hello") as landed:
            check(landed.status == 200 and urlsplit(str(landed.url)).path == "/hello",
                  f"signed in and back at the app ({landed.status} {landed.url})")
            record = await landed.json()
        check(header_values(record, "X-Forwarded-User") == [pk], f"X-Forwarded-User is the primary key ({pk})")
        check(header_values(record, "X-Forwarded-Email") == ["alice@example.test"], "the validator's email arrives")
        check(header_values(record, "X-Forwarded-Preferred-Username") == [USERNAME], "and its preferred_username")
        first_token = header_values(record, "Authorization")
        print(f"      waiting {ACCESS_TOKEN_SECONDS // 2 + 2}s for the access token to be due for refresh",
              flush=True)
        await asyncio.sleep(ACCESS_TOKEN_SECONDS // 2 + 2)
        async with client.get(public + "/after", headers={"Accept": "application/json"}) as resp:
            check(resp.status == 200, f"a request after half the token's life is served ({resp.status})")
            after = await resp.json()
        check(header_values(after, "Authorization") != first_token, "it carried a new access token (refreshed)")
        check(header_values(after, "X-Forwarded-User") == [pk], "for the same user")
        async with client.get(public + "/oauth2/sign_out", allow_redirects=False) as resp:
            location = resp.headers.get("Location", "")
        check(location.startswith(base + "/o/logout/"),
              f"sign-out goes to DOT's end-session endpoint ({location[:60]})")
        async with client.get(public + "/gone", headers={"Accept": "application/json"}) as resp:
            check(resp.status == 401, f"and the session is gone ({resp.status})")
    print(f"dot_check: all passed ({len(echo.seen)} requests reached the app)", flush=True)


if __name__ == "__main__":
    run_bounded(main, TIME_LIMIT)
