"""The `startable` command: run services in the foreground.

`startable run MODULE:ATTR` starts an object (or what a zero-argument
factory returns), logs its state changes, and stops it on SIGINT or SIGTERM.
MODULE is a dotted module name, importable from the current directory, or a
path to a `.py` file.

`startable up FILE` runs the cluster a TOML cluster file describes: its
services start in dependency order, each in a process of its own, with a live
table of their state and their output multiplexed below it; SIGINT or SIGTERM
stops them all, in reverse order.

`startable check FILE` and `startable graph FILE` read a cluster file as `up`
would, and print it resolved, or its dependency graph, starting nothing.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.machinery
import importlib.util
import math
import os
import platform
import sys
from collections.abc import Sequence

from .. import StartableError, __version__, run
from ..program import EXIT_USAGE, configure_logging, lifecycle_object

__all__ = ("load_target", "main")


class TargetError(StartableError):
    """The MODULE:ATTR given on the command line cannot be used."""


def _import(module_name: str) -> object:
    if module_name.endswith(".py") or os.sep in module_name:
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise TargetError(f"no such file: {module_name}")
        stem = os.path.splitext(os.path.basename(path))[0]
        other = importlib.machinery.PathFinder.find_spec(stem) if stem.isidentifier() else None
        # Named after the file, unless that would shadow another module
        # (`tools/json.py` must not become everybody's `json`).
        free = stem.isidentifier() and stem not in sys.modules
        name = stem if free and (other is None or other.origin == path) else "__startable_target__"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:  # pragma: no cover - not a .py file
            raise TargetError(f"cannot load {module_name}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(module_name)


def load_target(target: str) -> object:
    """Import `MODULE:ATTR` and return the object to run.

    If ATTR names something without a lifecycle that is callable (a class,
    a factory function), it is called with no arguments.

    Raises:
        TargetError: with a message that says what is wrong.
    """
    module_name, sep, attr = target.rpartition(":")  # a path may hold a colon
    if not sep or not module_name or not attr:
        raise TargetError(f"expected MODULE:ATTR, got {target!r}")
    try:
        obj = _import(module_name)
    except TargetError:
        raise
    except ImportError as exc:
        raise TargetError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(f"{module_name!r} has no attribute {attr!r}") from None
    try:
        return lifecycle_object(obj, target)
    except TypeError as exc:
        raise TargetError(str(exc)) from None


def seconds(text: str) -> float:
    """An argparse `type=`: a positive, finite number of seconds.

    Raises:
        argparse.ArgumentTypeError: for anything else (`-5`, `0`, `nan`, `inf`,
            `soon`), which argparse turns into a usage error (exit code 2).
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive, finite number, not {text!r}")
    return value


#: The commands that reach a running cluster through its control socket
#: (`_control.COMMANDS`, which a test keeps the same).
OPERATOR_COMMANDS = ("status", "logs", "start", "stop", "restart", "down", "reload", "scale")


def _count(text: str) -> int:
    """An argparse `type=`: a number of lines, 0 to 100,000."""
    if not (text.isascii() and text.isdigit()) or int(text) > 100_000:
        raise argparse.ArgumentTypeError(f"expected 0 to 100000 lines, not {text!r}")
    return int(text)


def _parser(width: int | None = None) -> argparse.ArgumentParser:
    def formatter(prog: str) -> argparse.HelpFormatter:
        return argparse.HelpFormatter(prog, width=width)

    parser = argparse.ArgumentParser(
        prog="startable", description=__doc__.split("\n\n")[0], formatter_class=formatter
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {__version__} (Python {platform.python_version()})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = functools.partial(commands.add_parser, formatter_class=formatter)
    run = add(
        "run",
        help="run one startable object until SIGINT or SIGTERM",
        description="Start MODULE:ATTR, log its state changes, stop it on SIGINT/SIGTERM "
        "(a second SIGINT forces). Exit code 0 only on a clean stop.",
    )
    run.add_argument("target", metavar="MODULE:ATTR", help="an object, or a zero-argument factory")
    run.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    run.add_argument("--start-timeout", type=seconds, metavar="SECONDS", default=None)
    run.add_argument("--stop-timeout", type=seconds, metavar="SECONDS", default=None)
    run.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), type=str.upper
    )
    up = add(
        "up",
        help="run the cluster a cluster file describes until SIGINT or SIGTERM",
        description="Start the services of FILE in dependency order, show their state and "
        "output, stop them on SIGINT/SIGTERM (a second SIGINT forces). Exit code 0 only on "
        "a clean stop.",
    )
    up.add_argument("file", metavar="FILE", help="a TOML cluster file")
    up.add_argument(
        "services",
        nargs="*",
        default=[],  # (without one, argparse names it among the arguments required)
        metavar="SERVICE",
        help="run only these services, and what they need (default: all)",
    )
    up.add_argument("--backend", choices=("trio", "asyncio"), default="trio")
    up.add_argument(
        "--no-live",
        dest="live",
        action="store_false",
        default=None,
        help="one line per event instead of the live table (the default when stdout "
        "is not a terminal)",
    )
    up.add_argument(
        "--detach",
        action="store_true",
        help="run it in the background (its output appended to a log next to the control "
        "socket); return once it is STARTED (exit code 0) or its start failed (1)",
    )
    up.add_argument(
        "--control",
        metavar="PATH",
        help="the control socket's path (by default one derived from the cluster's name and "
        "file, in $XDG_RUNTIME_DIR/startable or /tmp/startable-UID)",
    )
    up.add_argument(
        "--dev",
        action="store_true",
        help="dev mode: each pool runs one replica, reloaded when a Python file of its "
        "entry's source directory changes ([cluster] reload_delay of quiet first; "
        "needs watchfiles: pip install 'startable[dev]')",
    )
    check = add(
        "check",
        help="validate a cluster file and print what up would run, starting nothing",
        description="Read and resolve FILE as `startable up` would: print the cluster's "
        "settings, the start order and each service. Exit code 2 when FILE cannot be used.",
    )
    check.add_argument("file", metavar="FILE", help="a TOML cluster file")
    check.add_argument("--json", action="store_true", help="print it as JSON, for scripts")
    graph = add(
        "graph",
        help="print the dependency graph of a cluster file",
        description="Print the services of FILE and what each depends on: as text, by the "
        "steps of the start order, or as a mermaid flowchart. Exit code 2 when FILE cannot "
        "be used.",
    )
    graph.add_argument("file", metavar="FILE", help="a TOML cluster file")
    graph.add_argument(
        "--mermaid",
        dest="output",
        action="store_const",
        const="mermaid",
        default="text",
        help="a mermaid flowchart (an arrow from each service to what it needs)",
    )
    where = "the cluster file (FILE, by default ./startable.toml) or --control PATH"
    for name, summary in (
        ("status", "show the state of each service of a running cluster"),
        ("logs", "show the recent output of a running cluster's services, and follow it"),
        ("start", "start services of a running cluster, with what they need"),
        ("stop", "stop services of a running cluster, and first what depends on them"),
        ("restart", "stop and start services of a running cluster, their dependents too"),
        ("down", "stop a running cluster, as Ctrl-C does, and wait until it has stopped"),
        ("reload", "replace each replica of pools of a running cluster, one at a time"),
        ("scale", "give a pool of a running cluster this many replicas"),
    ):
        operator = add(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}: through its control socket, found "
            f"from {where}. Exit code 0 when done, 1 when the cluster refused or failed it, 2 "
            "when there is no cluster to ask.",
        )
        if name in ("status", "down"):
            operator.add_argument("args", nargs="*", metavar="FILE", help="the cluster file")
        elif name == "scale":
            operator.add_argument(
                "args",
                nargs="+",
                metavar="[FILE] POOL N",
                help="the cluster file (if it ends in .toml), the pool, its replicas",
            )
        else:
            required = name not in ("logs", "reload")
            operator.add_argument(
                "args",
                nargs="+" if required else "*",
                metavar="[FILE] SERVICE",
                help="the cluster file (if it ends in .toml), then the services"
                + ("" if required else " (none: all)"),
            )
        operator.add_argument("--control", metavar="PATH", help="the control socket's path")
        if name == "status":
            operator.add_argument("--json", action="store_true", help="print it as JSON")
            operator.add_argument(
                "--watch",
                action="store_true",
                help="show it again every --interval until Ctrl-C or the cluster stops "
                "(with --json: one document a line)",
            )
            operator.add_argument(
                "--interval",
                type=seconds,
                default=1.0,
                metavar="SECONDS",
                help="seconds between two --watch views (default 1)",
            )
        if name == "logs":
            operator.add_argument(
                "-n",
                "--lines",
                type=_count,
                default=10,
                help="recent lines to show (default 10; 0 to 100000)",
            )
            operator.add_argument(
                "-f", "--follow", action="store_true", help="then follow (until Ctrl-C)"
            )
    return parser


def render_reference() -> str:
    """The command reference (markdown): each command's `--help`, at 88 columns.

    `docs/generate.py` writes it to `docs/_generated/cli.md`; a test keeps it current.
    """
    parser = _parser(width=88)
    commands = next(
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    )
    parts = ["```text", parser.format_help().rstrip(), "```", ""]
    for name, command in commands.choices.items():
        parts += [f"## `startable {name}`", "", "```text", command.format_help().rstrip(), "```"]
        parts.append("")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `startable` command; returns the exit code."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # Names after an option (`up FILE --no-live web`) belong to the list of names.
    listed = "services" if args.command == "up" else "args"
    if extra and (any(e.startswith("-") for e in extra) or not hasattr(args, listed)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        setattr(args, listed, [*getattr(args, listed), *extra])
    if args.command in ("check", "graph"):
        from . import _check

        if args.command == "check":
            return _check.check(args.file, as_json=args.json)
        return _check.graph(args.file, output=args.output)
    if args.command in OPERATOR_COMMANDS:
        from ._commands import run_command

        return run_command(
            args.command,
            args.args,
            control=args.control,
            as_json=getattr(args, "json", False),
            lines=getattr(args, "lines", 10),
            follow=getattr(args, "follow", False),
            watch=args.interval if getattr(args, "watch", False) else None,
        )
    if args.command == "up" and args.detach:
        from ._detach import detach

        return detach(
            args.file,
            only=args.services,
            control=args.control,
            backend=args.backend,
            dev=args.dev,
        )
    if args.command == "up":
        from ._up import up  # rich and the cluster layer, only for this command

        return up(
            args.file,
            backend=args.backend,
            live=args.live,
            dev=args.dev,
            control=args.control,
            only=args.services,
        )
    configure_logging(args.log_level)  # before the import: it may log
    try:
        obj = load_target(args.target)
    except TargetError as exc:
        print(f"startable: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run(
        obj,
        backend=args.backend,
        start_timeout=args.start_timeout,
        stop_timeout=args.stop_timeout,
    )
