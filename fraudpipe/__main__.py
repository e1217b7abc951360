"""``python -m fraudpipe``: the same CLI as the ``fraudpipe`` console script."""

from cli import main

main()
