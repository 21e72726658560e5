"""The `big2small` command: a thin layer over the Python API.

- `options`: option text into library values (recipes, size targets, fold ratios);
- `commands`: one function per command: options checked, the library called, its report rendered;
- `render`: the reports as tables and text, and as JSON (`--json -`: only JSON on stdout).

Nothing here imports torch at module level: --help and argument errors answer at once. User
errors print one line to stderr and exit with status 2; no traceback.
"""

from __future__ import annotations

import sys

import typer

from big2small.cli import commands, export, render
from big2small.errors import Big2SmallError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Make trained neural networks small without their training data.")
app.command()(commands.compress)
app.command()(commands.decompress)
app.command()(commands.inspect)
app.command()(commands.verify)
app.command("eval")(commands.eval_)
app.command()(commands.bench)
app.command()(commands.selfcompress)
app.command()(commands.fold)
app.command()(commands.distill)
app.command()(export.export)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except Big2SmallError as exc:
        render.error(str(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        render.notes.print("interrupted")
        sys.exit(130)
