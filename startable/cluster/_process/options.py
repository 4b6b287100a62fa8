"""`ProcessOptions`: how a service's child process is run, and how much is kept of it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

from .._names import number


@attrs.frozen(kw_only=True)
class ProcessOptions:
    """How a controller runs the child process of a service, and what it keeps.

    One value serves every incarnation of a `ServiceContainer` (and the
    `container_options` of a `ServiceSpec`). Every field is checked when it
    is made, so a bad timeout is refused before any process starts.

    Attributes:
        python: the interpreter to run (None: the one running this code).
        inherit_env: whether the child gets this process's environment
            (under the service's own `env`).
        ready_timeout: seconds the child may take to say it is ready and to
            start the service.
        close_timeout: seconds between the close request and SIGTERM.
        term_timeout: seconds between SIGTERM and SIGKILL.
        output_lines: how many lines of output to keep.
        resources_interval: seconds between resource samples (0: none).
        resources_history: how many resource samples to keep.
        on_thread_error: what an error that ends a thread of the service
            means: `"report"` (the default: it is logged, kept in the
            controller's `errors`, and the service runs on, as an agent that
            alerts and stays up should) or `"stop"` (the service stops with
            it, a failure its restart policy answers). An error in a task of
            the service's lifecycle always stops it: that is the core's rule.

    Raises:
        ValueError: a number out of range (not positive, not finite), naming
            the field.
        TypeError: a value of the wrong type, naming the field.
    """

    python: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(str))
    )
    inherit_env: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    ready_timeout: float = attrs.field(default=60.0, validator=number(above=0))
    close_timeout: float = attrs.field(default=10.0, validator=number(above=0))
    term_timeout: float = attrs.field(default=5.0, validator=number(above=0))
    output_lines: int = attrs.field(default=1000, validator=number(at_least=1, integer=True))
    resources_interval: float = attrs.field(default=1.0, validator=number(at_least=0))
    resources_history: int = attrs.field(default=60, validator=number(at_least=1, integer=True))
    on_thread_error: Literal["report", "stop"] = attrs.field(
        default="report", validator=attrs.validators.in_(("report", "stop"))
    )

    @classmethod
    def of(cls, options: ProcessOptions | Mapping[str, object] | None) -> ProcessOptions:
        """`options` as a `ProcessOptions`: a mapping gives its fields by name.

        Raises:
            ValueError: a mapping names a field that does not exist (the
                message lists those that do), or a value is out of range.
            TypeError: `options` is neither; or a value of the wrong type.
        """
        if options is None:
            return cls()
        if isinstance(options, ProcessOptions):
            return options
        if not isinstance(options, Mapping):
            raise TypeError(f"process options are a ProcessOptions or a mapping, not {options!r}")
        known = {field.name for field in attrs.fields(cls)}
        unknown = sorted(str(key) for key in options if key not in known)
        if unknown:
            raise ValueError(
                f"unknown process option {', '.join(map(repr, unknown))} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**options)  # type: ignore[arg-type]  # each value is checked by its field
