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
from ._errors import DependencyCycleError as DependencyCycleError
from ._errors import DependencyStopped as DependencyStopped
from ._errors import EscalationError as EscalationError
from ._errors import FrameError as FrameError
from ._errors import MessageError as MessageError
from ._errors import PortClosed as PortClosed
from ._errors import PortError as PortError
from ._errors import RemoteError as RemoteError
from ._errors import RemoteExited as RemoteExited
from ._errors import ServiceDefinitionError as ServiceDefinitionError
from ._manager import ServiceEvent as ServiceEvent
from ._manager import ServicesManager as ServicesManager
from ._messages import ErrorInfo as ErrorInfo
from ._messages import Resources as Resources
from ._node import ServiceNode as ServiceNode
from ._permissions import Permissions as Permissions
from ._permissions import landlock_abi as landlock_abi
from ._port import ConnectionPort as ConnectionPort
from ._port import PortStatistics as PortStatistics
from ._port import from_socket as from_socket
from ._port import port_pair as port_pair
from ._services import NAME_RULE as NAME_RULE
from ._services import RestartPolicy as RestartPolicy
from ._services import ServiceSpec as ServiceSpec

__all__ = (
    "NAME_RULE",
    "AuthenticationError",
    "ClusterError",
    "ConnectionPort",
    "DependencyCycleError",
    "DependencyStopped",
    "ErrorInfo",
    "EscalationError",
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
    "RestartPolicy",
    "ServiceContainer",
    "ServiceController",
    "ServiceDefinitionError",
    "ServiceEvent",
    "ServiceNode",
    "ServiceSpec",
    "ServicesManager",
    "StopStep",
    "from_socket",
    "landlock_abi",
    "port_pair",
)

fixup_module_metadata(__name__, __all__, globals())
del fixup_module_metadata
