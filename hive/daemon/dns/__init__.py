"""The proxy's DNS responder (hive.yaml's ``proxy.dns``; docs/proxy.md, "DNS").

It answers the proxy's route hosts with the proxy's own addresses and forwards every
other name to an upstream resolver, so a browser reaches ``http://api.myapp.test`` through
the proxy once the system's resolver asks it.

- :mod:`.server`: :class:`DnsServer`, the daemon's part: when and where it listens.
- :mod:`.responder`: what it answers, what it forwards; the UDP and TCP listeners.
- :mod:`.forward`: forwarding to the upstream (UDP, TCP), with a deadline.
- :mod:`.wire`: reading a query, writing our answers (RFC 1035).
- :mod:`.addresses`: which addresses a route host gets.

Why no library: the responder reads one question and writes two kinds of answer; the
rest passes through as bytes. That is about 100 lines, where dnspython would add a
dependency and a parse of every forwarded message.
"""

from .responder import DnsCounts
from .server import DnsServer, dns_wanted

__all__ = ["DnsCounts", "DnsServer", "dns_wanted"]
