"""The socket server: accept, check the peer, pick the transport, serve requests.

A connection whose first byte is ``{`` speaks JSON lines; any other speaks length-
prefixed MessagePack frames. Each connection is its own task; its requests and
streams are tasks of the connection's task group, so a client that hangs up cancels
its streams and nothing it started outlives it. Bad input is answered with an error
and never reaches the rest of the daemon.

``SocketServer`` (``_socket_server``) accepts and checks each peer (``_peer``), then
hands the connection to private modules, one job each: ``_transports`` reads its
requests in the transport it picked, ``_dispatch`` runs each by its route and counts
what is in flight, ``_connection`` sends the answers and stream items under the
client's backlog budget, over ``_raw_stream``'s socket; ``_rate_limit`` paces a core
plugin's requests.
"""

from ._connection import Connection
from ._dispatch import _answer as _answer  # tests/test_store.py runs a handler through it
from ._peer import Peer, bind_unix_socket
from ._rate_limit import RateLimit
from ._raw_stream import RawStream
from ._socket_server import SocketServer

__all__ = ["Connection", "Peer", "RateLimit", "RawStream", "SocketServer", "bind_unix_socket"]
