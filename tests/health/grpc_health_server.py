"""A gRPC server with the standard health service (grpcio-health-checking), for the grpc check
tests: the server as a whole and ``hive.Up`` are SERVING, ``hive.Down`` is NOT_SERVING.

    python grpc_health_server.py PORT
"""

from __future__ import annotations

import sys
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{int(sys.argv[1])}")
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("hive.Up", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("hive.Down", health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
