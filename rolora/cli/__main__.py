"""``python -m rolora.cli``: the same entry point as the ``rolora`` script."""

from rolora.cli.app import main

main()
