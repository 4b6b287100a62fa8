"""Give any Python class an exact, race-free lifecycle.

READY → STARTING → STARTED → STOPPING → STOPPED, driven by three decorators
(`as_raw_start`, `as_raw_stop`, `assert_state`) and
`of`, under structured concurrency on anyio (trio by default, asyncio
too).
"""

from ._exceptions import AbortedError as AbortedError
from ._exceptions import DefinitionError as DefinitionError
from ._exceptions import NoOwnerError as NoOwnerError
from ._exceptions import StartableError as StartableError
from ._exceptions import StateError as StateError
from ._exceptions import StoppedError as StoppedError
from ._instrument import Instrument as Instrument
from ._instrument import instrumented as instrumented
from ._lifecycle import State as State
from ._markers import as_raw_start as as_raw_start
from ._markers import as_raw_stop as as_raw_stop
from ._markers import assert_state as assert_state
from ._markers import drain_timeout as drain_timeout
from ._markers import guarded_states as guarded_states
from ._owner import open_owner as open_owner
from ._running import run as run
from ._running import running as running
from ._startable import Hook as Hook
from ._startable import Startable as Startable
from ._startable import StartableStatistics as StartableStatistics
from ._startable import StateChange as StateChange
from ._startable import of as of
from ._util import fixup_module_metadata
from ._version import __version__ as __version__

__all__ = (
    "AbortedError",
    "DefinitionError",
    "Hook",
    "Instrument",
    "NoOwnerError",
    "Startable",
    "StartableError",
    "StartableStatistics",
    "State",
    "StateChange",
    "StateError",
    "StoppedError",
    "as_raw_start",
    "as_raw_stop",
    "assert_state",
    "drain_timeout",
    "guarded_states",
    "instrumented",
    "of",
    "open_owner",
    "run",
    "running",
)

fixup_module_metadata(__name__, __all__, globals())
del fixup_module_metadata
