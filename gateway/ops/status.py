"""The node's HTTP side door: /metrics for Prometheus, /healthz and /readyz."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.twisted import MetricsResource
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class _Check(Resource):
    isLeaf = True

    def __init__(self, ok: Callable[[], bool]) -> None:
        super().__init__()
        self._ok = ok

    def render_GET(self, request: Request) -> bytes:
        # Healthy: the process serves. Ready: it accepts calls (not draining),
        # so a load balancer should send it new calls.
        ok = self._ok()
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"content-type", b"text/plain")
        return b"ok\n" if ok else b"not ready\n"


class _QuietSite(Site):
    def log(self, request: Request) -> None:
        """Scrapes every few seconds would drown the call log; no access log here."""


def status_site(ready: Callable[[], bool], registry: CollectorRegistry) -> Site:
    """/metrics from ``registry``; /healthz always ok while serving; /readyz as ``ready``."""
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=registry))
    root.putChild(b"healthz", _Check(lambda: True))
    root.putChild(b"readyz", _Check(ready))
    site = _QuietSite(root)
    site.noisy = False
    return site
