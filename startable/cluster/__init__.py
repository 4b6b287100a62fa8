"""The cluster layer: services in child processes, driven over typed message ports.

Every component is itself a lifecycle built with the public decorators.
"""

from .._util import fixup_module_metadata
from ._container import ServiceContainer as ServiceContainer
from ._controller import OutputLine as OutputLine
from ._controller import ServiceController as ServiceController
from ._controller import StopStep as StopStep
from ._errors import AuthenticationError as AuthenticationError
from ._errors import ClusterError as ClusterError
from ._errors import FrameError as FrameError
from ._errors import MessageError as MessageError
from ._errors import PortClosed as PortClosed
from ._errors import PortError as PortError
from ._errors import RemoteError as RemoteError
from ._errors import RemoteExited as RemoteExited
from ._messages import ErrorInfo as ErrorInfo
from ._messages import Resources as Resources
from ._permissions import Permissions as Permissions
from ._permissions import landlock_abi as landlock_abi
from ._port import ConnectionPort as ConnectionPort
from ._port import PortStatistics as PortStatistics
from ._port import from_socket as from_socket
from ._port import port_pair as port_pair

__all__ = (
    "AuthenticationError",
    "ClusterError",
    "ConnectionPort",
    "ErrorInfo",
    "FrameError",
    "MessageError",
    "OutputLine",
    "Permissions",
    "PortClosed",
    "PortError",
    "PortStatistics",
    "RemoteError",
    "RemoteExited",
    "Resources",
    "ServiceContainer",
    "ServiceController",
    "StopStep",
    "from_socket",
    "landlock_abi",
    "port_pair",
)

fixup_module_metadata(__name__, __all__, globals())
del fixup_module_metadata
