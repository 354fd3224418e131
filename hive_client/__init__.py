"""Client library of the Hive supervisor: the wire protocol, the async
:class:`DaemonClient`, the blocking :class:`BlockingClient`, and the error tree.

``DaemonClient`` (which needs anyio) is imported on first use, so a script that only
uses ``BlockingClient`` starts without loading an event loop library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._client_sync import BlockingClient
from ._errors import (
    AlreadyExists,
    ConnectionClosed,
    DaemonError,
    DaemonNotRunning,
    ErrorCode,
    FrameTooLarge,
    HiveError,
    InvalidRequest,
    NotFound,
    NotText,
    PermissionDenied,
    ProtocolError,
    ProtocolVersionMismatch,
    RequestTimeout,
    ServiceFailed,
    SocketPermissionDenied,
    TransportError,
    Unavailable,
)
from ._messages import PROTOCOL_VERSION, AddSourceResult, DaemonStatus, ReloadPlan
from ._models import (
    ContainerUsage,
    DaemonEvent,
    DaemonReloaded,
    DaemonShutdown,
    DaemonStarted,
    Event,
    ExposedInfo,
    HealthCheckResult,
    InstanceOutcome,
    LogLevel,
    LogLevelChanged,
    LogLine,
    PluginConfigured,
    PluginFailed,
    PluginInfo,
    PluginNotice,
    PluginState,
    PluginStateChanged,
    RequestStat,
    RolloutCompleted,
    RolloutDrained,
    RolloutHealthy,
    RolloutRolledBack,
    RolloutStarted,
    RolloutSwitched,
    ServiceCrashed,
    ServiceExited,
    ServiceHealthChanged,
    ServiceInfo,
    ServiceRestarting,
    ServiceStarted,
    ServiceState,
    ServiceStateChanged,
    ServiceStopped,
    ServiceWaiting,
    SourceAdded,
    SourceChanged,
    SourceInfo,
    SourceRemoved,
    event_kinds,
)
from ._names import Fqn, fqn_matches, parse_fqn, validate_name
from ._paths import hive_home, resolve_socket_path
from ._streams import AsyncStream, SyncStream
from ._version import __version__

if TYPE_CHECKING:
    from ._client_async import DaemonClient

__all__ = [
    "PROTOCOL_VERSION",
    "AddSourceResult",
    "AlreadyExists",
    "AsyncStream",
    "BlockingClient",
    "ConnectionClosed",
    "ContainerUsage",
    "DaemonClient",
    "DaemonError",
    "DaemonEvent",
    "DaemonNotRunning",
    "DaemonReloaded",
    "DaemonShutdown",
    "DaemonStarted",
    "DaemonStatus",
    "ErrorCode",
    "Event",
    "ExposedInfo",
    "Fqn",
    "FrameTooLarge",
    "HealthCheckResult",
    "HiveError",
    "InstanceOutcome",
    "InvalidRequest",
    "LogLevel",
    "LogLevelChanged",
    "LogLine",
    "NotFound",
    "NotText",
    "PermissionDenied",
    "PluginConfigured",
    "PluginFailed",
    "PluginInfo",
    "PluginNotice",
    "PluginState",
    "PluginStateChanged",
    "ProtocolError",
    "ProtocolVersionMismatch",
    "ReloadPlan",
    "RequestStat",
    "RequestTimeout",
    "RolloutCompleted",
    "RolloutDrained",
    "RolloutHealthy",
    "RolloutRolledBack",
    "RolloutStarted",
    "RolloutSwitched",
    "ServiceCrashed",
    "ServiceExited",
    "ServiceFailed",
    "ServiceHealthChanged",
    "ServiceInfo",
    "ServiceRestarting",
    "ServiceStarted",
    "ServiceState",
    "ServiceStateChanged",
    "ServiceStopped",
    "ServiceWaiting",
    "SocketPermissionDenied",
    "SourceAdded",
    "SourceChanged",
    "SourceInfo",
    "SourceRemoved",
    "SyncStream",
    "TransportError",
    "Unavailable",
    "__version__",
    "event_kinds",
    "fqn_matches",
    "hive_home",
    "parse_fqn",
    "resolve_socket_path",
    "validate_name",
]


def __getattr__(name: str) -> Any:
    if name == "DaemonClient":
        from ._client_async import DaemonClient

        return DaemonClient
    raise AttributeError(f"module 'hive_client' has no attribute {name!r}")
