"""A fake Microsoft Graph on 127.0.0.1: the signed-in user's groups, in pages, as
``GET /v1.0/me/transitiveMemberOf/microsoft.graph.group?$select=id`` answers them.

``groups`` are served ``page_size`` to a page with ``@odata.nextLink`` to the next (``$skiptoken``);
``status`` makes every answer that HTTP status with a Graph-style error body instead. Every request is
recorded (path, query, ``Authorization``) in ``seen``. ``start_graph`` also serves as a decoy: a server that
must never be asked (``seen`` stays empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

GROUPS_PATH = "/v1.0/me/transitiveMemberOf/microsoft.graph.group"


@dataclass
class GraphRequest:
    path: str
    query: dict[str, str]
    authorization: str | None


@dataclass
class FakeGraph:
    url: str
    groups: list[str] = field(default_factory=list)
    page_size: int = 2
    status: int = 200
    seen: list[GraphRequest] = field(default_factory=list)
    runner: web.AppRunner | None = None

    def tokens_seen(self) -> list[str]:
        return [r.authorization.removeprefix("Bearer ") for r in self.seen if r.authorization]

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen.append(GraphRequest(request.path, dict(request.query), request.headers.get("Authorization")))
        if self.status != 200:
            return web.json_response({"error": {"code": "Authorization_RequestDenied",
                                                "message": "Insufficient privileges to complete the operation."}},
                                     status=self.status)
        if request.path != GROUPS_PATH or request.query.get("$select") != "id":
            return web.json_response({"error": {"code": "Request_BadRequest"}}, status=400)
        start = int(request.query.get("$skiptoken", "0"))
        chunk = self.groups[start:start + self.page_size]
        body: dict = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects",
                      "value": [{"@odata.type": "#microsoft.graph.group", "id": g} for g in chunk]}
        if start + self.page_size < len(self.groups):
            body["@odata.nextLink"] = f"{self.url}{GROUPS_PATH}?$select=id&$skiptoken={start + self.page_size}"
        return web.json_response(body)

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def start_graph(port: int) -> FakeGraph:
    graph = FakeGraph(url=f"http://127.0.0.1:{port}")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", graph._handle)
    graph.runner = web.AppRunner(app, access_log=None)
    await graph.runner.setup()
    await web.TCPSite(graph.runner, "127.0.0.1", port).start()
    return graph
