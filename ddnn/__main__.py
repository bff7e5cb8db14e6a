"""`python -m ddnn` is the `ddnn` command."""

from ddnn.cli import main

main()
