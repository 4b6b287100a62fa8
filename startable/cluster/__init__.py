"""The cluster layer: services in child processes, driven over typed message ports.

Every component is itself a lifecycle built with the public decorators.

The package is arranged by layer, each using only those below it:
`_names` and `_errors` (shared by all), `_ipc` (frames and ports),
`_sandbox` (permissions), `_data` (the data plane's contract, links,
client, directory and router), `_process` (child processes: spawn,
controller, remote, container), `_system` (specs, cluster files, runners,
supervision, nodes, the manager). Names are imported on first use, so a
child process loads only the layers it runs.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING

from .._util import fixup_module_metadata as _fixup_module_metadata

if _TYPE_CHECKING:
    from ._data.client import Answer as Answer
    from ._data.client import ServiceClient as ServiceClient
    from ._data.client import this_service as this_service
    from ._data.config import Config as Config
    from ._data.config import ConfigChanges as ConfigChanges
    from ._data.contract import DEFAULT_DEADLINE as DEFAULT_DEADLINE
    from ._data.contract import MAX_CONFIG_BYTES as MAX_CONFIG_BYTES
    from ._data.contract import MAX_CONFIG_KEYS as MAX_CONFIG_KEYS
    from ._data.contract import MAX_CONFIG_VALUE as MAX_CONFIG_VALUE
    from ._data.contract import MAX_CONFIGURING as MAX_CONFIGURING
    from ._data.contract import MAX_DEADLINE as MAX_DEADLINE
    from ._data.contract import ConfigChange as ConfigChange
    from ._data.contract import Event as Event
    from ._data.handlers import handler as handler
    from ._data.router import MAX_IN_FLIGHT as MAX_IN_FLIGHT
    from ._data.router import MAX_TOPICS as MAX_TOPICS
    from ._data.router import OUTBOX_CAPACITY as OUTBOX_CAPACITY
    from ._errors import AuthenticationError as AuthenticationError
    from ._errors import ClusterError as ClusterError
    from ._errors import DependencyCycleError as DependencyCycleError
    from ._errors import DependencyStopped as DependencyStopped
    from ._errors import EscalationError as EscalationError
    from ._errors import ForcedStop as ForcedStop
    from ._errors import FrameError as FrameError
    from ._errors import HandlerNotFound as HandlerNotFound
    from ._errors import HealthCheckFailed as HealthCheckFailed
    from ._errors import MalformedRequest as MalformedRequest
    from ._errors import MessageError as MessageError
    from ._errors import PortClosed as PortClosed
    from ._errors import PortError as PortError
    from ._errors import RemoteError as RemoteError
    from ._errors import RemoteExited as RemoteExited
    from ._errors import RequestError as RequestError
    from ._errors import RequestRefused as RequestRefused
    from ._errors import RequestTimeout as RequestTimeout
    from ._errors import ServiceDefinitionError as ServiceDefinitionError
    from ._errors import ServiceExited as ServiceExited
    from ._errors import ServiceUnavailable as ServiceUnavailable
    from ._ipc.messages import ErrorInfo as ErrorInfo
    from ._ipc.messages import Resources as Resources
    from ._ipc.port import ConnectionPort as ConnectionPort
    from ._ipc.port import PortStatistics as PortStatistics
    from ._ipc.port import from_socket as from_socket
    from ._ipc.port import port_pair as port_pair
    from ._names import NAME_RULE as NAME_RULE
    from ._process.command import CommandProcess as CommandProcess
    from ._process.command import Readiness as Readiness
    from ._process.container import ServiceContainer as ServiceContainer
    from ._process.controller import OutputLine as OutputLine
    from ._process.controller import ServiceController as ServiceController
    from ._process.controller import StopStep as StopStep
    from ._process.listen import MAX_LISTEN as MAX_LISTEN
    from ._process.listen import ListenAddress as ListenAddress
    from ._process.listen import ListenSocket as ListenSocket
    from ._process.listen import bind_listener as bind_listener
    from ._process.listen import listen_sockets as listen_sockets
    from ._process.options import ProcessOptions as ProcessOptions
    from ._redis.link import LinkStatistics as LinkStatistics
    from ._redis.link import RedisLink as RedisLink
    from ._redis.server import EmbeddedRedis as EmbeddedRedis
    from ._sandbox.permissions import Permissions as Permissions
    from ._sandbox.permissions import landlock_abi as landlock_abi
    from ._system.file import ClusterFile as ClusterFile
    from ._system.file import ClusterFileError as ClusterFileError
    from ._system.file import load_cluster as load_cluster
    from ._system.file import parse_cluster as parse_cluster
    from ._system.file import source_directory as source_directory
    from ._system.manager import ServiceEvent as ServiceEvent
    from ._system.manager import ServicesManager as ServicesManager
    from ._system.node import ServiceNode as ServiceNode
    from ._system.pool import Replica as Replica
    from ._system.services import MAX_REPLICAS as MAX_REPLICAS
    from ._system.services import HealthCheck as HealthCheck
    from ._system.services import RestartPolicy as RestartPolicy
    from ._system.services import ServiceSpec as ServiceSpec

#: Where each public name is defined, relative to this package.
_WHERE: dict[str, str] = {
    "source_directory": "._system.file",
    "MAX_REPLICAS": "._system.services",
    "HealthCheck": "._system.services",
    "HealthCheckFailed": "._errors",
    "CommandProcess": "._process.command",
    "Readiness": "._process.command",
    "Replica": "._system.pool",
    "Answer": "._data.client",
    "ServiceClient": "._data.client",
    "this_service": "._data.client",
    "Config": "._data.config",
    "ConfigChanges": "._data.config",
    "ConfigChange": "._data.contract",
    "MAX_CONFIG_BYTES": "._data.contract",
    "MAX_CONFIG_KEYS": "._data.contract",
    "MAX_CONFIGURING": "._data.contract",
    "MAX_CONFIG_VALUE": "._data.contract",
    "DEFAULT_DEADLINE": "._data.contract",
    "MAX_DEADLINE": "._data.contract",
    "Event": "._data.contract",
    "handler": "._data.handlers",
    "MAX_IN_FLIGHT": "._data.router",
    "MAX_TOPICS": "._data.router",
    "OUTBOX_CAPACITY": "._data.router",
    "AuthenticationError": "._errors",
    "ClusterError": "._errors",
    "DependencyCycleError": "._errors",
    "DependencyStopped": "._errors",
    "EscalationError": "._errors",
    "ForcedStop": "._errors",
    "FrameError": "._errors",
    "HandlerNotFound": "._errors",
    "MalformedRequest": "._errors",
    "MessageError": "._errors",
    "PortClosed": "._errors",
    "PortError": "._errors",
    "RemoteError": "._errors",
    "RemoteExited": "._errors",
    "RequestError": "._errors",
    "RequestRefused": "._errors",
    "RequestTimeout": "._errors",
    "ServiceDefinitionError": "._errors",
    "ServiceExited": "._errors",
    "ServiceUnavailable": "._errors",
    "ErrorInfo": "._ipc.messages",
    "Resources": "._ipc.messages",
    "ConnectionPort": "._ipc.port",
    "PortStatistics": "._ipc.port",
    "from_socket": "._ipc.port",
    "port_pair": "._ipc.port",
    "NAME_RULE": "._names",
    "ServiceContainer": "._process.container",
    "OutputLine": "._process.controller",
    "EmbeddedRedis": "._redis.server",
    "RedisLink": "._redis.link",
    "LinkStatistics": "._redis.link",
    "ProcessOptions": "._process.options",
    "ListenAddress": "._process.listen",
    "ListenSocket": "._process.listen",
    "bind_listener": "._process.listen",
    "listen_sockets": "._process.listen",
    "MAX_LISTEN": "._process.listen",
    "ServiceController": "._process.controller",
    "StopStep": "._process.controller",
    "Permissions": "._sandbox.permissions",
    "landlock_abi": "._sandbox.permissions",
    "ClusterFile": "._system.file",
    "ClusterFileError": "._system.file",
    "load_cluster": "._system.file",
    "parse_cluster": "._system.file",
    "ServiceEvent": "._system.manager",
    "ServicesManager": "._system.manager",
    "ServiceNode": "._system.node",
    "RestartPolicy": "._system.services",
    "ServiceSpec": "._system.services",
}

__all__ = (
    "DEFAULT_DEADLINE",
    "MAX_CONFIGURING",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_KEYS",
    "MAX_CONFIG_VALUE",
    "MAX_DEADLINE",
    "MAX_IN_FLIGHT",
    "MAX_LISTEN",
    "MAX_REPLICAS",
    "MAX_TOPICS",
    "NAME_RULE",
    "OUTBOX_CAPACITY",
    "Answer",
    "AuthenticationError",
    "ClusterError",
    "ClusterFile",
    "ClusterFileError",
    "CommandProcess",
    "Config",
    "ConfigChange",
    "ConfigChanges",
    "ConnectionPort",
    "DependencyCycleError",
    "DependencyStopped",
    "EmbeddedRedis",
    "ErrorInfo",
    "EscalationError",
    "Event",
    "ForcedStop",
    "FrameError",
    "HandlerNotFound",
    "HealthCheck",
    "HealthCheckFailed",
    "LinkStatistics",
    "ListenAddress",
    "ListenSocket",
    "MalformedRequest",
    "MessageError",
    "OutputLine",
    "Permissions",
    "PortClosed",
    "PortError",
    "PortStatistics",
    "ProcessOptions",
    "Readiness",
    "RedisLink",
    "RemoteError",
    "RemoteExited",
    "Replica",
    "RequestError",
    "RequestRefused",
    "RequestTimeout",
    "Resources",
    "RestartPolicy",
    "ServiceClient",
    "ServiceContainer",
    "ServiceController",
    "ServiceDefinitionError",
    "ServiceEvent",
    "ServiceExited",
    "ServiceNode",
    "ServiceSpec",
    "ServiceUnavailable",
    "ServicesManager",
    "StopStep",
    "bind_listener",
    "from_socket",
    "handler",
    "landlock_abi",
    "listen_sockets",
    "load_cluster",
    "parse_cluster",
    "port_pair",
    "source_directory",
    "this_service",
)


def __getattr__(name: str) -> object:
    """Import a public name's module on first use (PEP 562)."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value: object = getattr(_importlib.import_module(where, __name__), name)
    globals()[name] = value
    _fixup_module_metadata(__name__, [name], globals())  # reported as defined here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
