"""`python -m startable.cluster._child`: the remote process's entry point.

A module of its own, imported by nothing else, so that running it does not
execute `_remote` a second time as `__main__`.
"""

from ._process.remote import main

main()
