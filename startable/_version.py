"""The version of this startable (one place: the package, the CLI and the wire read it)."""

__version__ = "0.1.0.dev0"
