"""Service supervision: each instance's lifecycle as a table, each service's commands
run one at a time by its owner.

- :mod:`.machine`: the phases of an instance, the inputs, and the transition table.
- :mod:`.jobs`: commands queued per service, merged by a table, run in order.
- :mod:`.runtime`: what the daemon keeps about a service and its instances.
- :mod:`.core`: the :class:`Supervisor`: commands, the instances' tasks, adoption.
"""

from .core import Supervisor
from .machine import Phase
from .runtime import Backoff, InstanceRuntime, ServiceRuntime

__all__ = ["Backoff", "InstanceRuntime", "Phase", "ServiceRuntime", "Supervisor"]
