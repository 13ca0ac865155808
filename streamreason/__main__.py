"""``python -m streamreason``: the command line."""

from streamreason.cli import main

main()
