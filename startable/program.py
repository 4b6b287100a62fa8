"""Writing a program around a lifecycle: make it from what the user named, drive it, log.

`drive` starts a lifecycle, waits for a signal, and stops it in bounded
time; `startable run` (through `startable.run`) and `startable up` both use
it, each with a `Narrator` of its own that says what happens (log records,
or lines above a live table). `lifecycle_object` turns what a user named on
a command line or in a cluster file (an object, or a factory) into the
object to run; `configure_logging` sets logging up as `startable run` does.
"""

from ._program import EXIT_FAILED as EXIT_FAILED
from ._program import EXIT_FORCED as EXIT_FORCED
from ._program import EXIT_OK as EXIT_OK
from ._program import EXIT_USAGE as EXIT_USAGE
from ._program import LOG_FORMAT as LOG_FORMAT
from ._program import Narrator as Narrator
from ._program import Phase as Phase
from ._program import configure_logging as configure_logging
from ._program import drive as drive
from ._program import has_lifecycle as has_lifecycle
from ._program import lifecycle_object as lifecycle_object
from ._util import fixup_module_metadata

__all__ = (
    "EXIT_FAILED",
    "EXIT_FORCED",
    "EXIT_OK",
    "EXIT_USAGE",
    "LOG_FORMAT",
    "Narrator",
    "Phase",
    "configure_logging",
    "drive",
    "has_lifecycle",
    "lifecycle_object",
)

fixup_module_metadata(__name__, __all__, globals(), defined_in="startable._program")
del fixup_module_metadata
