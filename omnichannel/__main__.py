"""``python -m omnichannel``: the same as the ``omnichannel`` command."""

from omnichannel.cli import main

main()
