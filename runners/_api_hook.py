"""A hook step in a container, through the engine's API (docker, podman).

What ``run --rm`` attached did with the CLI: create the container (named
``hive-hook-<8 hex>``, labelled ``hive.hook-of=<fqn>``: not an instance), start it, pass
its lines to the hook's output as they come, return its exit code, remove it. Through
the API, the engine's own failures (image missing, port taken, an option it refuses) are
the step's error, a :class:`RunnerError` in the same words as a service's start, and never
lines of the step's output, as the CLI's stderr made them; the environment is in the
create body, on no command line; no CLI process. A step cut (its ``timeout``, a stop) or
failed removes its container.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from ._container import HOOK_LINE_CAP, config_hash, create_body, passed_environment
from ._engine_logs import copy_log
from .base import RunnerError, RunSpec
from .output import Lines

if TYPE_CHECKING:
    from ._container_runner import ContainerRunner

__all__ = ["run_hook"]


async def run_hook(runner: ContainerRunner, spec: RunSpec, output: Callable[[str, str], None]) -> int:
    """Run the step's container to its end, its lines to ``output``; its exit code."""
    config = runner.config_of(spec)
    image, socket = config.image.strip(), config.socket
    env = passed_environment(spec, config)
    name = f"hive-hook-{secrets.token_hex(4)}"
    body = create_body(spec, config, env, config_hash(spec, image, env), hook=True)
    api = runner.api(socket)
    container_id = await runner.create(api, body, name, config)
    try:
        try:
            await api.request("POST", f"/containers/{container_id}/start")
        except RunnerError as exc:
            raise runner.api_error("start", exc) from None
        streams = {1: Lines("stdout", output, HOOK_LINE_CAP), 2: Lines("stderr", output, HOOK_LINE_CAP)}
        try:
            await copy_log(api, container_id, None,
                           lambda stream, payload: streams[2 if stream == 2 else 1].feed(payload))
        finally:
            for lines in streams.values():
                lines.end()
        try:
            ended = await api.request("POST", f"/containers/{container_id}/wait", timeout=None)
        except RunnerError as exc:
            raise runner.api_error("wait", exc) from None
        code = ended.get("StatusCode") if isinstance(ended, dict) else None
        if not isinstance(code, int):
            raise RunnerError(f"the {runner.display} engine gave no exit code for the step's container")
        return code
    finally:
        with anyio.CancelScope(shield=True):
            await runner.remove(container_id, socket)
