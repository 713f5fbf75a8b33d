"""The upstream boundary: every byte to and from the app behind the proxy passes through this subpackage.

Nothing outside it opens a connection to an upstream, writes a request to one or reads its answer; the
rest of the proxy decides *whether* a request may go (``gate``) and *which* header fields it carries
(``headers``, the policy, which the gate also consults), and hands the request over here.

A request flows: ``forward`` routes it (the longest ``upstreams[].path`` prefix) and picks a client,
the lean HTTP/1.1 client (``http1_pool`` → ``http1_connection`` → ``http1``) for a plain-HTTP or
unix-socket upstream when the request allows it, else the upstream's pooled ``aiohttp.ClientSession``
(TLS, other bodies, anything unusual). A large request body of known length goes up through
``splice``; ``relay`` sends the answer on to the client. A WebSocket upgrade, once
``proxy/websocket.py`` has let it through, is connected to the app and relayed by ``websocket``.

- ``forward``           routing, the choice of client, and errors turned into 502/504;
- ``http1_pool``        the lean client's keep-alive connections to one upstream: sending a request
                        and waiting for its answer's head, with one retry where that is safe;
- ``http1_connection``  one connection: the protocol object that parses answers with llhttp as they
                        arrive, enforcing the caps on a response head;
- ``http1``             what the rest reads: ``Http1Response`` (status, headers, the body as it
                        arrives), the lean client's errors, and the caps;
- ``splice``            moving a large body from socket to socket inside the kernel, both ways;
- ``relay``             the app's response on to the client: whole, streamed, batched or spliced, and
                        cut short when the user's session ends (``STREAMS``);
- ``websocket``         the app's side of a WebSocket: the upstream handshake (``connect``) and the
                        connection taken from aiohttp's client (``AppSide``). ``proxy/websocket.py`` keeps
                        the client's side: the upgrade's checks and refusals, and the socket's life with
                        its session;
- ``frames``            WebSocket frames relayed between the two connections, with no task (``FrameRelay``).

The names other modules import are re-exported here: ``Forwarder`` and its app key ``FORWARDER``,
``Upstream`` and ``make_client`` (built by ``app``), ``UPSTREAM_LABEL`` (the request key naming the
upstream a request went to, for metrics and logs), and ``STREAMS``/``LiveStream`` (the responses
streaming to a signed-in user, which a session's end cuts short). ``proxy/websocket.py`` imports the
WebSocket names from ``upstream.websocket`` (``connect``, ``AppSocket``, ``requested_protocols``) and
``upstream.frames`` (``FrameRelay``, ``Side``, ``Close``, ``close_frame``) itself.
"""

from .forward import FORWARDER, UPSTREAM_LABEL, Forwarder, Upstream, make_client
from .relay import STREAMS, LiveStream

__all__ = ["FORWARDER", "STREAMS", "UPSTREAM_LABEL", "Forwarder", "LiveStream", "Upstream", "make_client"]
