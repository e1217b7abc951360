"""``python -m fraudpipe``: the same CLI as the ``fraudpipe`` console script."""

from fraudpipe.cli import main

main()
