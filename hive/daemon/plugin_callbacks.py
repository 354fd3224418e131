"""The plugin's side of its callbacks, the same in a child process and on a thread: the
daemon names a method (``load``, ``connect``, ``init``, ``run``, ``on_event``, ``call``,
``shutdown``, ``disconnect``, ``ping``) and this runs it on the plugin's loop."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

import msgspec

from hive.plugin import CorePlugin

if TYPE_CHECKING:
    from hive_client import DaemonClient, DaemonEvent

__all__ = ["Callbacks", "HeldContext"]


class Callbacks:
    """One plugin object, its client and what the daemon asks of them."""

    def __init__(self, client_sock: socket.socket) -> None:
        self.client_sock = client_sock
        self.plugin: CorePlugin[Any] | None = None
        self.client: DaemonClient | None = None
        self.held: HeldContext | None = None

    def create(self, plugin_class: type[CorePlugin[Any]], settings: dict[str, Any]) -> None:
        plugin = plugin_class()
        plugin.settings = msgspec.convert(settings, plugin_class.Settings, str_keys=True)
        self.plugin = plugin

    def configure(self, settings: dict[str, Any]) -> None:
        """New settings (a reload); synchronous, so they are set before the next event."""
        assert self.plugin is not None
        self.plugin.settings = msgspec.convert(settings, type(self.plugin).Settings, str_keys=True)

    async def dispatch(self, method: str, event: DaemonEvent | None, args: dict[str, Any]) -> Any:
        if method == "connect":
            from hive_client import DaemonClient

            self.client = DaemonClient(args["socket_path"], connected=self.client_sock,
                                       client_name=args["client_name"], timeout=args["timeout"])
            self.held = HeldContext(self.client)
            await self.held.open()
            self.client.timeout = args["call_timeout"]
            return None
        if method == "disconnect":
            if self.held is not None:
                await self.held.close()
            return None
        if method == "ping":
            return None
        plugin = self.plugin
        assert plugin is not None
        if method == "init":
            assert self.client is not None
            return await plugin.init(self.client)
        if method == "run":
            return await plugin.run()
        if method == "on_event":
            assert event is not None
            return await plugin.on_event(event)
        if method == "call":
            return await plugin.call(args["command"], args["args"])
        if method == "shutdown":
            return await plugin.shutdown()
        raise ValueError(f"unknown plugin method {method!r}")


class HeldContext:
    """An async context manager held open by a task of the plugin's loop (the plugin's
    client: its task group must be entered and left by the same task)."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self._release: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Enter the context (on the plugin's loop); its error if entering fails."""
        loop = asyncio.get_running_loop()
        entered: asyncio.Future[None] = loop.create_future()
        release = self._release = asyncio.Event()

        async def hold() -> None:
            async with self.manager:
                entered.set_result(None)
                await release.wait()

        task = self._task = loop.create_task(hold())
        try:
            await asyncio.wait({entered, task}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not entered.done():
            task.result()  # raises why it could not be entered
        if not entered.done():
            raise RuntimeError("the context ended before it was entered")

    async def close(self) -> None:
        if self._release is not None and self._task is not None:
            self._release.set()
            await self._task
