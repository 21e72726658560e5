"""`python -m big2small.cli`: the same as the `big2small` command."""

from big2small.cli import main

main()
