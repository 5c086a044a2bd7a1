"""The subcommands of ``abdoseg``: each module has ``register(subparsers)`` and a ``run_*(args)``."""

from . import compare, export, info, segment

ALL = (segment, export, compare, info)
