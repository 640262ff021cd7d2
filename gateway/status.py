"""The node's HTTP side door: /metrics for Prometheus, /healthz and /readyz."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.twisted import MetricsResource
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

if TYPE_CHECKING:
    from gateway.node import Node


class _Check(Resource):
    isLeaf = True

    def __init__(self, node: Node, ready: bool) -> None:
        super().__init__()
        self._node = node
        self._ready = ready

    def render_GET(self, request: Request) -> bytes:
        # Healthy: the process serves. Ready: it accepts calls (not draining),
        # so a load balancer should send it new calls.
        ok = self._node.ready if self._ready else True
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"content-type", b"text/plain")
        return b"ok\n" if ok else b"not ready\n"


class _QuietSite(Site):
    def log(self, request: Request) -> None:
        """Scrapes every few seconds would drown the call log; no access log here."""


def status_site(node: Node) -> Site:
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=node.metrics.registry))
    root.putChild(b"healthz", _Check(node, ready=False))
    root.putChild(b"readyz", _Check(node, ready=True))
    site = _QuietSite(root)
    site.noisy = False
    return site
