"""Where gRPC stops: the status table and the call edge every servicer runs its calls through.

Nothing outside this package, the servicers (`covergen.service`), the composition root
(`covergen.server`) and the client knows about gRPC. Domain objects raise `covergen.errors`;
`status.STATUS_BY_ERROR` turns them into status codes, and `calls.CallEdge` wraps each call with
drain refusal, the request metrics and the request log line.
"""

from __future__ import annotations

from covergen.rpc.calls import CallEdge, Refusal, ServingState
from covergen.rpc.status import STATUS_BY_ERROR, status_for

__all__ = ["STATUS_BY_ERROR", "CallEdge", "Refusal", "ServingState", "status_for"]
