"""A service's health checks."""

from __future__ import annotations

from typing import Any

import msgspec

from .._decode import describe
from .._issues import KeyPath
from .._model import (
    CmdCheck,
    GrpcCheck,
    HealthCheckSpec,
    HttpCheck,
    MysqlCheck,
    PostgresCheck,
    RedisCheck,
    TcpCheck,
    _CheckTiming,
)
from ._blocks import TypedBlocks
from ._common import TemplateScope

__all__ = ["Checks"]

# Built-in types whose `{type: X, X: {...}}` block is required (an error when missing).
_CHECKS_WITH_REQUIRED_BLOCK = frozenset({"http", "tcp", "cmd", "postgres", "mysql", "redis", "grpc"})
_SERVER_CHECKS: dict[str, type[_CheckTiming]] = {
    "postgres": PostgresCheck, "mysql": MysqlCheck, "redis": RedisCheck, "grpc": GrpcCheck,
}


class Checks(TypedBlocks):
    """``healthcheck:`` of a service. State: decoder, sink, root."""

    def healthchecks(
        self, value: Any, path: KeyPath, scope: TemplateScope
    ) -> list[HealthCheckSpec] | None:
        if value is None:
            return []
        entries = self._one_or_many(value, path, "a check")
        if entries is None:
            return None
        checks = [self.healthcheck(item, item_path, scope) for item, item_path in entries]
        if None in checks:
            return None
        return [check for check in checks if check is not None]

    def healthcheck(
        self, value: Any, path: KeyPath, scope: TemplateScope
    ) -> HealthCheckSpec | None:
        found = self._plugin_block(
            value,
            path,
            category="health",
            label="health check",
            required_blocks=_CHECKS_WITH_REQUIRED_BLOCK,
            type_required="Health check type is required",
            missing_block="Missing '{t}' configuration",
        )
        if found is None:
            return None
        type_name, block = found
        block_path = (*path, type_name)
        http = tcp = cmd = None
        servers: dict[str, Any] = {}
        timing: _CheckTiming | None
        if type_name == "http":
            timing = http = self.decoder.decode(block, HttpCheck, block_path)
        elif type_name == "tcp":
            timing = tcp = self.decoder.decode(block, TcpCheck, block_path)
        elif type_name == "cmd":
            timing = cmd = self.decoder.decode(block, CmdCheck, block_path)
            if cmd is not None and not cmd.command.strip():
                self.sink.error((*block_path, "command"), "'command' is required")
                return None
            if cmd is not None:
                cmd = msgspec.structs.replace(
                    cmd,
                    working_dir=self._resolve(self.root, cmd.working_dir, (*block_path, "working_dir")),
                )
        elif type_name in _SERVER_CHECKS:
            timing = self.decoder.decode(block, _SERVER_CHECKS[type_name], block_path)
            servers[type_name] = timing
        else:
            timing = self.decoder.decode(block, _CheckTiming, block_path, warn_unknown=False)
        if timing is None:
            return None
        port_check = http or tcp or servers.get(type_name)
        if port_check is not None:
            if not port_check.port:
                self.sink.error((*block_path, "port"), "'port' is required")
                return None
            start = self._error_count()
            self._check_port_reference(port_check.port, (*block_path, "port"), scope)
            if self._error_count() > start:
                return None
        return HealthCheckSpec(
            type=type_name,
            config=block,
            interval=timing.interval,
            timeout=timing.timeout,
            retries=timing.retries,
            start_period=timing.start_period,
            http=http,
            tcp=tcp,
            cmd=cmd,
            **servers,
        )
