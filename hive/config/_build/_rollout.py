"""A service's rollout and the ports it names."""

from __future__ import annotations

from typing import Any

from .._decode import parse_port
from .._issues import KeyPath
from .._model import BlueGreenSettings, PortBinding, RolloutSpec
from ._blocks import TypedBlocks
from ._common import IDENTIFIER_RE

__all__ = ["Rollouts"]

# Built-in types whose `{type: X, X: {...}}` block is required (an error when missing).
_ROLLOUTS_WITH_REQUIRED_BLOCK = frozenset({"recreate", "blue-green"})


class Rollouts(TypedBlocks):
    """``rollout:`` of a service. State: decoder, sink."""

    def rollout(self, value: Any, path: KeyPath) -> RolloutSpec | None:
        found = self._plugin_block(
            value,
            path,
            category="rollout",
            label="rollout",
            required_blocks=_ROLLOUTS_WITH_REQUIRED_BLOCK,
            type_required="Rollout type is required",
            missing_block="Missing '{t}' configuration",
        )
        if found is None:
            return None
        type_name, block = found
        block_path = (*path, type_name)
        start = self._error_count()
        settings = None
        if type_name == "recreate":
            self.decoder.warn_unknown_keys(block, ("ports",), block_path)
            ports = self._rollout_ports(block, block_path, blue_green=False)
        elif type_name == "blue-green":
            rest = {key: item for key, item in block.items() if key != "ports"}
            settings = self.decoder.decode(
                rest, BlueGreenSettings, block_path, extra_keys=("ports",)
            )
            ports = self._rollout_ports(block, block_path, blue_green=True)
        else:
            ports = self._plugin_rollout_ports(block)
        if ports is None or self._error_count() > start:
            return None
        return RolloutSpec(type=type_name, config=block, ports=ports, blue_green=settings)

    def _rollout_ports(
        self, block: dict[str, Any], path: KeyPath, *, blue_green: bool
    ) -> dict[str, PortBinding] | None:
        ports_path = (*path, "ports")
        if block.get("ports") is None:
            self.sink.error(ports_path, "'ports' is required")
            return None
        if not self._expect_mapping(block["ports"], ports_path, "a mapping of port names to ports"):
            return None
        result: dict[str, PortBinding] = {}
        for name, value in block["ports"].items():
            port_path = (*ports_path, name)
            if IDENTIFIER_RE.match(name) is None:
                self.sink.warning(
                    port_path,
                    f"port name '{name}' cannot be used in {{{{runtime.port.NAME}}}} "
                    "(use letters, digits and '_')",
                )
            if isinstance(value, dict):
                self.decoder.warn_unknown_keys(value, ("blue", "green"), port_path)
                blue = self._port(value, "blue", port_path)
                green = (
                    self._port(value, "green", port_path)
                    if blue_green or "green" in value
                    else None
                )
                if blue is None or (blue_green and green is None):
                    continue
                if blue_green and blue == green:
                    self.sink.error(
                        port_path, f"blue and green must be different ports (both are {blue})"
                    )
                    continue
                # Recreate accepts {blue, green} (a C-written config) and runs on blue.
                result[name] = PortBinding(blue=blue, green=green if blue_green else None)
            elif blue_green:
                self.sink.error(
                    port_path,
                    f"a blue-green port needs both colours, e.g. {{blue: {value}, green: <port>}}",
                )
            else:
                try:
                    result[name] = PortBinding(blue=parse_port(value, auto=True))
                except ValueError as exc:
                    self.sink.error(port_path, str(exc))
        return result

    def _port(self, mapping: dict[str, Any], key: str, path: KeyPath) -> int | None:
        if mapping.get(key) is None:
            self.sink.error((*path, key), f"'{key}' is required")
            return None
        try:
            return parse_port(mapping[key])
        except ValueError as exc:
            self.sink.error((*path, key), str(exc))
            return None

    @staticmethod
    def _plugin_rollout_ports(block: dict[str, Any]) -> dict[str, PortBinding]:
        """Other rollout types: the integer values under `<type>.ports` (others are the plugin's)."""
        ports = block.get("ports")
        if not isinstance(ports, dict):
            return {}
        result: dict[str, PortBinding] = {}
        for name, value in ports.items():
            try:
                result[name] = PortBinding(blue=parse_port(value))
            except ValueError:
                continue
        return result
