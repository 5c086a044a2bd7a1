"""The subcommands of ``abdoseg``: each module has ``register(subparsers)`` and a ``run_*(args)``."""

from . import info, segment

ALL = (segment, info)
