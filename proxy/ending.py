"""The "session ended" event (a minimal copy of its interface; the ``end`` branch owns this module).

``SessionEnd`` is what every holder of a session honours; ``Fanout`` carries ends between the
processes that serve one host (``host.HostFanout``).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol


class Reason(str, enum.Enum):
    SIGN_OUT = "sign_out"
    BACKCHANNEL = "backchannel_logout"
    EXPIRY = "expiry"
    REFRESH_REFUSED = "refresh_refused"
    COOKIE_LIMIT = "cookie_limit"


@dataclass(frozen=True, slots=True)
class SessionEnd:
    reason: Reason
    at: float
    ttl: float
    session_id: str | None = None
    sid: str | None = None
    sub: str | None = None

    def to_bytes(self) -> bytes:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        data["reason"] = self.reason.value
        return json.dumps(data, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> SessionEnd:
        """Parse an end; ``ValueError`` when it is not one."""
        try:
            data = json.loads(raw)
            end = cls(reason=Reason(data.pop("reason")), **data)
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError("not a session end") from exc
        numbers = (end.at, end.ttl)
        if not all(isinstance(n, (int, float)) and not isinstance(n, bool) and math.isfinite(n) for n in numbers):
            raise ValueError("not a session end: at/ttl")
        if not all(v is None or isinstance(v, str) for v in (end.session_id, end.sid, end.sub)):
            raise ValueError("not a session end: ids")
        return end


class Fanout(Protocol):
    async def publish(self, end: SessionEnd) -> None: ...

    def subscribe(self, receive: Callable[[SessionEnd], None]) -> None: ...

    async def close(self) -> None: ...
