"""TLS on the listener: the server context, the certificate reloaded while serving, and the plain-HTTP redirect.

**Defaults** (Mozilla's *intermediate* configuration, https://ssl-config.mozilla.org/#config=intermediate,
guidelines v5.7): TLS 1.2 and 1.3 only (``tls.min_version: "1.3"`` drops 1.2 — Mozilla's *modern*); for
TLS 1.2 only ECDHE key exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305), so every connection has
forward secrecy and nothing uses CBC, RC4, 3DES or static RSA; Mozilla's DHE suites are left out, because
they need a ``dhparam`` file and every client the intermediate profile supports speaks ECDHE. TLS 1.3's
suites are OpenSSL's (all AEAD). The client picks among them (Mozilla: no server preference, since all are
strong and phones without AES hardware prefer ChaCha20). No TLS compression (CRIME), no renegotiation
(OpenSSL 3 refuses insecure renegotiation; TLS 1.3 has none) and no session tickets (Mozilla: tickets whose
key never rotates undo forward secrecy; ``workers: N`` processes could not share one anyway). ALPN offers
``http/1.1``, the only protocol aiohttp's server speaks.

**Reloading without dropping a connection**: the listener keeps the one ``ssl.SSLContext`` it was started
with; its ``sni_callback`` — which OpenSSL calls during every handshake, with or without SNI — moves the
new connection onto ``ListenerCertificate.current``. A connection already open keeps the context it
shook hands with, so replacing the certificate touches only handshakes to come. ``current`` is replaced
when the contents of ``cert_file`` or ``key_file`` (or ``client_ca_file``) change (polled every
``tls.reload_interval``, however the files are replaced: renamed over, rewritten, a symbolic link swapped) and on
SIGHUP (``server.py`` starts a new listener, with a new context, before the old one drains). A new pair
that cannot be loaded — half written, a key that is not the certificate's — is logged naming the file
and the old certificate stays in use; at start-up or on SIGHUP the same problem is a ``ConfigError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from .config import Config, ListenTLSConfig
from .crypto import certificate_dates
from .errors import ConfigError, Problem

log = logging.getLogger("authproxy")

# Mozilla intermediate v5.7, TLS 1.2 suites, in its order, without the DHE ones (see the module docstring).
CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
ALPN = ["http/1.1"]
# A certificate that expires sooner than this is logged as a warning at each load (Let's Encrypt renews 30 days
# before; a week left means renewal has failed for three weeks).
EXPIRY_WARNING = 7 * 24 * 3600
# A Host header the redirect listener believes: a DNS name or a bracketed IPv6 address, and a port.
_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:[0-9]{1,5})?")


def _no_password() -> str:
    raise ValueError("the key is encrypted")


def _signature(settings: ListenTLSConfig) -> bytes | None:
    """A digest of the files' contents, which changes however they are replaced: renamed over, rewritten in
    place within one timestamp tick, or a symbolic link swapped (a Kubernetes secret volume). A few KiB read
    every ``reload_interval``. None while one cannot be read."""
    digest = hashlib.sha256()
    try:
        for path in (settings.cert_file, settings.key_file, settings.client_ca_file):
            if path is not None:
                with open(path, "rb") as file:
                    digest.update(hashlib.sha256(file.read()).digest())
    except OSError:
        return None
    return digest.digest()


def context_problems(settings: ListenTLSConfig) -> tuple[ssl.SSLContext | None, list[Problem]]:
    """A server context for the pair of files (and the client CAs), or the problems with them, each naming the
    key and the fix. Only ``client_ca_file`` ever goes into the context's trust store."""
    files = [("tls.cert_file", settings.cert_file), ("tls.key_file", settings.key_file),
             ("tls.client_ca_file", settings.client_ca_file)]
    for key, path in files:
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            return None, [Problem(key, f"{path!r} cannot be read ({exc.strerror}); give the path of a PEM file "
                                       "the user authproxy runs as may read")]
    try:                # a certificate is there at all (in a context of its own: never a trust anchor for clients)
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=settings.cert_file)
    except (ssl.SSLError, ValueError):
        return None, [Problem("tls.cert_file", f"{settings.cert_file!r} holds no PEM certificate; give the server "
                                               "certificate followed by its intermediates, PEM-encoded")]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file, password=_no_password)
    except (ssl.SSLError, ValueError) as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            message = (f"{settings.key_file!r} is not the private key of the certificate in "
                       f"{settings.cert_file!r}; give the key the certificate was issued for")
        else:
            message = (f"{settings.key_file!r} holds no usable PEM private key ({exc}); give an unencrypted "
                       "PEM key (PKCS#8 or traditional), e.g. openssl pkey -in key.pem -out plain.pem")
        return None, [Problem("tls.key_file", message)]
    if settings.client_ca_file is not None:
        problem = _require_client_certificates(context, settings.client_ca_file)
        if problem is not None:
            return None, [problem]
    context.minimum_version = VERSIONS[settings.min_version]
    context.set_ciphers(CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET | ssl.OP_NO_RENEGOTIATION
    context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(ALPN)
    return context, []


def _require_client_certificates(context: ssl.SSLContext, client_ca_file: str) -> Problem | None:
    """``tls.client_ca_file``: every client must present a certificate one of these CAs signed (mutual TLS)."""
    try:
        context.load_verify_locations(cafile=client_ca_file)
    except (ssl.SSLError, ValueError):
        return Problem("tls.client_ca_file", f"{client_ca_file!r} holds no PEM certificate; give the CA "
                                             "certificates that sign the clients', PEM-encoded")
    context.verify_mode = ssl.CERT_REQUIRED
    return None


def check(config: Config, source: str = "<config>") -> Config:
    """``config`` when its certificate and key can be served (or TLS is off); a ``ConfigError`` otherwise.
    Run at start-up, by ``--check-config`` and before a SIGHUP reload is accepted."""
    if config.tls is not None:
        _, problems = context_problems(config.tls)
        if problems:
            raise ConfigError(source, problems)
    return config


def describe(cert_file: str, now: Callable[[], float] = time.time) -> None:
    """Log the serial and expiry of the certificate now served; a warning when it is expired, not yet valid,
    or expires within EXPIRY_WARNING (browsers would refuse it, and nothing else tells the operator)."""
    try:
        with open(cert_file, "rb") as file:
            dates = certificate_dates(file.read())
    except OSError:
        return
    if dates is None:
        return
    serial, not_before, not_after = dates
    until = datetime.datetime.fromtimestamp(not_after, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    left = not_after - now()
    if left < 0 or not_before > now():
        log.warning("the TLS certificate in %s (serial %x) is not valid now (valid until %s): browsers refuse it; "
                    "renew it, authproxy loads the new one when the file changes", cert_file, serial, until)
    elif left < EXPIRY_WARNING:
        log.warning("the TLS certificate in %s (serial %x) expires in %.1f days (%s); renew it, authproxy loads "
                    "the new one when the file changes", cert_file, serial, left / 86400, until)
    else:
        log.info("serving the TLS certificate in %s (serial %x, valid until %s)", cert_file, serial, until)


class ListenerCertificate:
    """The listener's one ``ssl.SSLContext`` (``context``) and the certificate new handshakes get (``current``)."""

    def __init__(self, settings: ListenTLSConfig) -> None:
        self.settings = settings
        self._seen = _signature(settings)
        current, problems = context_problems(settings)
        if current is None:
            raise ConfigError("tls", problems)
        self.context = self.current = current
        self.context.sni_callback = self._choose
        self.loads = 1
        describe(settings.cert_file)

    def _choose(self, connection: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        """During each handshake: serve the newest certificate (a handshake done keeps its own)."""
        if connection.context is not self.current:
            connection.context = self.current

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed since the last look; True when a new certificate is in use."""
        seen = _signature(self.settings)
        if seen is None or seen == self._seen:
            return False
        self._seen = seen
        current, problems = context_problems(self.settings)
        if current is None:
            log.error("TLS certificate not reloaded, new connections keep the previous one: %s",
                      "; ".join(str(problem) for problem in problems))
            return False
        current.sni_callback = self._choose
        self.current = current
        self.loads += 1
        log.info("TLS certificate reloaded from %s", self.settings.cert_file)
        describe(self.settings.cert_file)
        return True

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval)
            self.reload_if_changed()


class TLSSite(web.TCPSite):
    """aiohttp's TCP site with a bound on the TLS handshake: a client that connects and never finishes its
    handshake is cut after ``handshake_timeout`` (``limits.header_timeout``), as one that never sends its
    request head is. asyncio's and uvloop's default of 60 s would otherwise hold, whatever the operator set,
    and a connection still shaking hands is not yet one of ``limits.max_connections``."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, handshake_timeout: float,
                 **options: Any) -> None:
        super().__init__(runner, host, port, **options)
        self.handshake_timeout = handshake_timeout

    async def start(self) -> None:
        self._runner._reg_site(self)                  # what BaseSite.start does
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            ssl_handshake_timeout=self.handshake_timeout)


def watching(certificate: ListenerCertificate) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` that polls the certificate's files while the app runs."""
    async def ctx(_app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(certificate.watch())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return ctx


def redirect_target(config: Config, host: str | None, path_qs: str) -> str | None:
    """Where the plain-HTTP listener sends a request: ``public_url``'s origin and the request's path and query,
    when ``host`` (the Host header) names ``public_url``'s host; None (a 400) for any other host or a Host
    that is not a plain name or address, so the redirect can never lead elsewhere. A ``path_qs`` not
    starting with exactly one ``/`` (an absolute-form target, ``//other``) becomes ``/``; otherwise the
    target goes on exactly as it came (``raw_path``: nothing decoded)."""
    match = _HOST.fullmatch((host or "").lower())
    if match is None or match.group(1).strip("[]").rstrip(".") != urlsplit(config.public_url).hostname:
        return None
    if not path_qs.startswith("/") or path_qs.startswith("//"):
        path_qs = "/"
    return config.public_origin + path_qs


def redirect_app(config: Config) -> web.Application:
    """The plain-HTTP listener's app (``tls.redirect_http_listen``): 308 (method and body kept, RFC 9110 §15.4.9)
    to the https ``public_url``; nothing else is served there."""
    async def redirect(request: web.Request) -> web.StreamResponse:
        target = redirect_target(config, request.headers.get("Host"), request.raw_path)
        if target is None:
            return web.Response(status=400, text="unknown host; use " + config.public_origin + "\n")
        return web.Response(status=308, headers={"Location": target})
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    return app
