"""The address form of ``proxy.dns.upstream`` (hive.yaml) and ``[proxy.dns] upstream``
(config.toml): an IP address, with an optional port (53). A host name is refused: the
daemon would have to resolve it, perhaps through itself."""

from __future__ import annotations

import ipaddress

__all__ = ["parse_dns_upstream"]


def parse_dns_upstream(text: str) -> tuple[str, int]:
    """``8.8.8.8:53``, ``8.8.8.8``, ``[2001:4860::8888]:53`` or ``::1`` -> (ip, port);
    ValueError says what is expected."""
    host, port = text.strip(), "53"
    if host.startswith("["):
        inside, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not IP:PORT (e.g. 8.8.8.8:53 or [::1]:53)")
        host, port = inside, rest[1:] or "53"
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r} is not IP:PORT (e.g. 8.8.8.8:53 or [::1]:53): "
                         "the upstream must be an IP address, not a host name") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be 1 to 65535")
    return str(address), int(port)
