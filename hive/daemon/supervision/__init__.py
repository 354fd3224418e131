"""Service supervision: each instance's lifecycle as a table, each service's commands
run one at a time by its owner.

- :mod:`.machine`: the phases of an instance, the inputs, and the transition table.
- :mod:`.jobs`: commands queued per service, merged by a table, run in order.
- :mod:`.runtime`: what the daemon keeps about a service and its instances.
- :mod:`.supervisor`: the :class:`Supervisor` facade: commands, jobs, outcomes.
- :mod:`.actions`: what each job does; :mod:`.outcomes`: what a command answers;
  :mod:`.order`: dependency order of starts and stops.
- :mod:`.phases`: the one place a phase changes (by the table).
- :mod:`.instance_task`: the task driving one live instance; :mod:`.stopping`: stops.
- :mod:`.launch`: run specs, environments, ports, hooks and builds.
- :mod:`.dependencies`: waits for ``depends_on`` and ``uses`` (exposure, secrets).
- :mod:`.records`: desired states and process records; :mod:`.adoption`: what
  earlier daemons left running. :mod:`.registry`: the services by fqn.
- :mod:`.status`: the status view of an instance.
"""

from .machine import Phase
from .runtime import Backoff, InstanceRuntime, ServiceRuntime
from .supervisor import SourceChange, Supervisor

__all__ = ["Backoff", "InstanceRuntime", "Phase", "ServiceRuntime", "SourceChange", "Supervisor"]
