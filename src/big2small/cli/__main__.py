"""`python -m big2small.cli`: the same as the `big2small` command."""

from big2small.cli import main

if __name__ == "__main__":  # importing this module (e.g. walking the package) must not run the CLI
    main()
