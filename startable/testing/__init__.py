"""Property-based race testing of lifecycles: for your services, and for ours.

`check_lifecycle(MyService)` lets hypothesis generate programs of concurrent
starts, stops, guarded calls, spontaneous stops and crashes, injects faults
into the raw hooks, and checks after every step that the lifecycle keeps its
promises (see `Invariant`). Failures shrink to a short program, reported with
the `replay=` argument that runs it again exactly.

Needs hypothesis: `pip install 'startable[testing]'`.
"""

try:
    import hypothesis as _hypothesis  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "startable.testing needs hypothesis; install it with: pip install 'startable[testing]'"
    ) from exc

from .._util import fixup_module_metadata
from ._check import EXAMPLES_VARIABLE as EXAMPLES_VARIABLE
from ._check import check_lifecycle as check_lifecycle
from ._program import BUILTIN_ACTIONS as BUILTIN_ACTIONS
from ._program import CRASH as CRASH
from ._program import START as START
from ._program import START_ASYNC_HOOK as START_ASYNC_HOOK
from ._program import START_CANCELLED as START_CANCELLED
from ._program import START_RAISING_HOOK as START_RAISING_HOOK
from ._program import STOP as STOP
from ._program import STOP_CANCELLED as STOP_CANCELLED
from ._program import STOP_NOWAIT as STOP_NOWAIT
from ._program import STOP_REASON as STOP_REASON
from ._program import TASK as TASK
from ._program import Fault as Fault
from ._program import Program as Program
from ._program import Step as Step
from ._program import programs as programs
from ._runner import run_program as run_program
from ._vocabulary import Event as Event
from ._vocabulary import EventKind as EventKind
from ._vocabulary import HookFault as HookFault
from ._vocabulary import InjectedFault as InjectedFault
from ._vocabulary import Invariant as Invariant
from ._vocabulary import Lifecycle as Lifecycle
from ._vocabulary import LifecycleViolation as LifecycleViolation
from ._vocabulary import Operation as Operation
from ._vocabulary import Reason as Reason
from ._vocabulary import RunView as RunView

__all__ = (
    "BUILTIN_ACTIONS",
    "CRASH",
    "EXAMPLES_VARIABLE",
    "START",
    "START_ASYNC_HOOK",
    "START_CANCELLED",
    "START_RAISING_HOOK",
    "STOP",
    "STOP_CANCELLED",
    "STOP_NOWAIT",
    "STOP_REASON",
    "TASK",
    "Event",
    "EventKind",
    "Fault",
    "HookFault",
    "InjectedFault",
    "Invariant",
    "Lifecycle",
    "LifecycleViolation",
    "Operation",
    "Program",
    "Reason",
    "RunView",
    "Step",
    "check_lifecycle",
    "programs",
    "run_program",
)

fixup_module_metadata(__name__, __all__, globals())
del fixup_module_metadata
