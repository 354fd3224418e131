"""Which addresses a route host resolves to: where the proxy listens.

A host address of ``[proxy] listen`` (or a file's ``proxy.bind``) is answered as it is;
a wildcard (``0.0.0.0``, ``::``) as the loopback of its family; a name (``localhost``)
as both loopbacks. A family the proxy does not listen on gets no address, so a client
does not try ``::1`` where nothing listens before it falls back to ``127.0.0.1``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["answer_addresses"]

_LOOPBACK_V4 = ipaddress.IPv4Address("127.0.0.1").packed
_LOOPBACK_V6 = ipaddress.IPv6Address("::1").packed


def answer_addresses(listen: Iterable[str]) -> tuple[list[bytes], list[bytes]]:
    """The A and AAAA addresses (packed) for the proxy's ``HOST:PORT`` listeners."""
    v4: list[bytes] = []
    v6: list[bytes] = []
    for address in listen:
        host = address.rpartition(":")[0].strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:  # a name: it may resolve to either loopback
            found = [(v4, _LOOPBACK_V4), (v6, _LOOPBACK_V6)]
        else:
            if ip.is_unspecified:
                found = [(v4, _LOOPBACK_V4)] if ip.version == 4 else [(v6, _LOOPBACK_V6)]
            else:
                found = [(v4, ip.packed)] if ip.version == 4 else [(v6, ip.packed)]
        for family, packed in found:
            if packed not in family:
                family.append(packed)
    return v4, v6
