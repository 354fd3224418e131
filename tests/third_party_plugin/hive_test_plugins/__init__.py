"""Core plugins for Hive's tests.

- ``recorder`` appends one JSON line per thing it sees to ``settings.path``: its init
  (with what the daemon answered to ``list_services``), each event, its settings on
  ``plugin_configured``, its shutdown. With ``stop_on_start`` it tries to stop that
  service when the daemon has started (or its settings were reloaded) and records the
  answer (scope tests).
- ``raiser`` raises in every ``on_event``.
- ``blocker`` never returns from ``on_event``.
- ``flooder`` calls the daemon as fast as it can from ``run()``.
- ``broken`` raises in ``init``; ``stuck`` never returns from it.
- ``sleeper`` blocks its thread (``time.sleep``) in ``on_event(daemon_reloaded)``;
  ``dozer`` in ``init``; ``spinner`` spins the CPU in ``run()``.
- ``sneaker`` is a recorder that, on ``daemon_started``, opens a client of its own on the
  daemon's socket to stop ``stop_on_start`` beyond its scope, and records the answer.
- ``follower`` is a recorder whose manifest depends on ``recorder``; ``future`` one
  written for a plugin API no daemon supports yet.
- ``wedge`` is a recorder that blocks its thread in its first ``on_event(daemon_reloaded)``,
  opening the FIFO ``fifo`` until something writes to it.
- ``flaky`` is a recorder whose ``on_event`` raises while the file ``fail_while`` exists.
- ``talker`` is a recorder that logs (a warning at init, an info line on each reload).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import anyio
import msgspec

from hive.plugin import CorePlugin, DaemonClient, DaemonEvent, NoSettings


class RecorderSettings(msgspec.Struct, forbid_unknown_fields=True):
    path: str
    label: str = "recorder"
    stop_on_start: str | None = None
    init_delay: float = 0.0  # seconds its init takes
    fifo: str = ""  # wedge
    fail_while: str = ""  # flaky


class Recorder(CorePlugin[RecorderSettings]):
    name = "recorder"
    version = "1.0.0"
    Settings = RecorderSettings

    def _write(self, **record: Any) -> None:
        with open(self.settings.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")

    async def init(self, client: DaemonClient) -> None:
        self.client = client
        services = await client.list_services()
        await anyio.sleep(self.settings.init_delay)
        self._write(what="init", label=self.settings.label, services=[s.fqn for s in services])

    async def on_event(self, event: DaemonEvent) -> None:
        kind = event.__struct_config__.tag
        self._write(what="event", kind=kind, seq=event.seq, fqn=getattr(event, "fqn", None),
                    plugin=getattr(event, "plugin", None))
        if kind == "plugin_configured":
            self._write(what="settings", label=self.settings.label)
        if kind in ("daemon_started", "plugin_configured") and self.settings.stop_on_start:
            try:
                await self.client.stop_service(self.settings.stop_on_start)
            except Exception as exc:  # the answer is what the test wants to see
                self._write(what="stop", error=f"{type(exc).__name__}: {exc}")
            else:
                self._write(what="stop", error=None)

    async def shutdown(self) -> None:
        self._write(what="shutdown", label=self.settings.label)


class Raiser(CorePlugin[NoSettings]):
    name = "raiser"
    version = "1.0.0"

    async def init(self, client: DaemonClient) -> None:
        pass

    async def on_event(self, event: DaemonEvent) -> None:
        raise RuntimeError(f"raiser cannot take {event.__struct_config__.tag}")


class Blocker(CorePlugin[NoSettings]):
    name = "blocker"
    version = "1.0.0"

    async def init(self, client: DaemonClient) -> None:
        pass

    async def on_event(self, event: DaemonEvent) -> None:
        await anyio.sleep_forever()


class Flooder(CorePlugin[NoSettings]):
    name = "flooder"
    version = "1.0.0"

    async def init(self, client: DaemonClient) -> None:
        self.client = client
        self.calls = 0

    async def run(self) -> None:
        async def hammer() -> None:
            while True:
                await self.client.list_services()
                self.calls += 1

        async with anyio.create_task_group() as tasks:
            for _ in range(32):
                tasks.start_soon(hammer)


class Broken(CorePlugin[NoSettings]):
    name = "broken"
    version = "1.0.0"

    async def init(self, client: DaemonClient) -> None:
        raise RuntimeError("cannot reach the mothership")


class Stuck(CorePlugin[NoSettings]):
    name = "stuck"
    version = "1.0.0"

    async def init(self, client: DaemonClient) -> None:
        await anyio.sleep_forever()


class SleeperSettings(msgspec.Struct, forbid_unknown_fields=True):
    seconds: float = 3600.0


class Sleeper(CorePlugin[SleeperSettings]):
    name = "sleeper"
    version = "1.0.0"
    Settings = SleeperSettings

    async def init(self, client: DaemonClient) -> None:
        pass

    async def on_event(self, event: DaemonEvent) -> None:
        if event.__struct_config__.tag == "daemon_reloaded":
            time.sleep(self.settings.seconds)  # noqa: ASYNC251 -- the mistake under test


class Dozer(CorePlugin[SleeperSettings]):
    name = "dozer"
    version = "1.0.0"
    Settings = SleeperSettings

    async def init(self, client: DaemonClient) -> None:
        time.sleep(self.settings.seconds)  # noqa: ASYNC251 -- the mistake under test


class Spinner(CorePlugin[NoSettings]):
    name = "spinner"
    version = "1.0.0"

    async def init(self, client: DaemonClient) -> None:
        pass

    async def run(self) -> None:
        spins = 0
        while True:  # never gives its loop back
            spins += 1


class Sneaker(Recorder):
    name = "sneaker"

    async def on_event(self, event: DaemonEvent) -> None:
        if event.__struct_config__.tag != "daemon_started" or not self.settings.stop_on_start:
            return
        try:
            async with DaemonClient(self.client.socket_path, timeout=10) as own:
                await own.stop_service(self.settings.stop_on_start)
        except Exception as exc:  # the answer is what the test wants to see
            self._write(what="stop", error=f"{type(exc).__name__}: {exc}")
        else:
            self._write(what="stop", error=None)


class Follower(Recorder):
    name = "follower"
    capabilities = ("following",)
    depends_on = ("recorder",)


class Future(Recorder):
    name = "future"
    api_version = 99


class Wedge(Recorder):
    name = "wedge"

    async def on_event(self, event: DaemonEvent) -> None:
        await super().on_event(event)
        if event.__struct_config__.tag == "daemon_reloaded" and not getattr(self, "wedged", False):
            self.wedged = True  # once
            with open(self.settings.fifo, encoding="utf-8") as fifo:  # noqa: ASYNC230 -- the mistake under test
                fifo.read()


class Flaky(Recorder):
    name = "flaky"

    async def on_event(self, event: DaemonEvent) -> None:
        if os.path.exists(self.settings.fail_while):
            raise RuntimeError(f"flaky cannot take {event.__struct_config__.tag}")
        await super().on_event(event)


class Talker(Recorder):
    """Logs a line at init and at each ``daemon_reloaded``, for the daemon's log."""

    name = "talker"

    async def init(self, client: DaemonClient) -> None:
        await super().init(client)
        logging.getLogger("hive_test_plugins.talker").warning("talker says hello from pid %d", os.getpid())

    async def on_event(self, event: DaemonEvent) -> None:
        await super().on_event(event)
        if event.__struct_config__.tag == "daemon_reloaded":
            logging.getLogger("hive_test_plugins.talker").info("talker heard a reload")
