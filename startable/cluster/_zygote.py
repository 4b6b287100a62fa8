"""`python -m startable.cluster._zygote`: a pool's fork server (see `_process.zygote`).

A module of its own, imported by nothing else, as `_child` is for remotes.
"""

from ._process.zygote import serve

serve()
