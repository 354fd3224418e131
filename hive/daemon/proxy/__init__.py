"""The embedded HTTP/1.1 and WebSocket reverse proxy (docs/proxy.md).

- :mod:`.server`: :class:`ProxyServer`, the daemon's part: listeners, route table rebuilds,
  drain at shutdown.
- :mod:`.routes`: the immutable route table (host, longest path prefix, cocoons).
- :mod:`.upstreams`: which instances serve a service, in turn; pinning a service's set
  is one assignment (blue-green's switch).
- :mod:`.client`: a client connection (httptools parser), its limits and timers.
- :mod:`.exchange`: one request's way to an instance and back; 502/503/504.
- :mod:`.upstream`: connections to instances and their keep-alive pool; tunnels.
- :mod:`.wire`: heads as rewritten (hop-by-hop, X-Forwarded-*), chunked framing.
- :mod:`.pages`: the proxy's own answers, the 502/503 page as text or JSON.
- :mod:`.plugins`: the request plugin chain: ``rate-limit`` and ``cors``.
- :mod:`.bindings`: a hive.yaml's ``proxy.bind`` listeners and their ``proxy.ssl``.
- :mod:`.caddy`, :mod:`.caddy_config`: the Caddy backend (``[proxy] backend = "caddy"``):
  a caddy the daemon starts, loaded with the routes through its admin API.

Why httptools: it is llhttp (Node's parser) in C, called back from ``data_received``;
h11 parses in pure Python, several times slower per request (bench/proxy.py).
"""

from .routes import Route, RouteTable
from .server import ProxyServer
from .upstreams import Target, Upstreams

__all__ = ["ProxyServer", "Route", "RouteTable", "Target", "Upstreams"]
