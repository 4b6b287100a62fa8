"""A module that fails while it is imported (for the container tests)."""

raise ImportError("a module-level dependency is missing")
