"""``python -m agentmesh``: the same as the ``agentmesh`` command."""

from ._private.cli import main

main()
