"""`--help` and argument errors answer without loading torch or transformers (seconds of imports):
the command line imports the library inside each command, and `import big2small` is lazy."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers")


def imported_modules(*args):
    """The modules `python -m big2small.cli ARGS` imports (from -X importtime), and the result."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "big2small.cli", *args],
                            capture_output=True, text=True)
    modules = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    return modules, result


@pytest.mark.parametrize("args, status", [
    (["--help"], 0),
    (["compress", "--help"], 0),
    (["fold", "--help"], 0),
    (["eval", "--help"], 0),
    (["compress"], 2),  # missing MODEL
    (["inspect", "a.b2s", "--tensors", "yes"], 2),  # unexpected argument
    (["compress", "m.safetensors", "--bpw", "3", "--ratio", "8", "-o", "x.b2s"], 2),  # our check, before the library
    (["selfcompress", "--teacher", "t.safetensors"], 2),  # --teacher without --distill: our check
    (["compress", "m.safetensors", "--bpw", "3", "--bpw-over", "all", "-o", "x.b2s"], 2),
])
def test_help_and_argument_errors_import_neither_torch_nor_transformers(args, status):
    modules, result = imported_modules(*args)
    assert result.returncode == status, result.stderr[-2000:]
    assert "big2small.cli.commands" in modules  # the listing is real
    assert sorted(m for m in modules if m.split(".")[0] in HEAVY) == []


def test_importing_the_package_loads_no_torch_until_a_name_is_used():
    code = ("import sys, big2small as b2s; assert 'torch' not in sys.modules; "
            "from big2small.compress import plan_model; import big2small.restore; "
            "assert callable(b2s.compress) and callable(b2s.restore), (b2s.compress, b2s.restore); "
            "assert b2s.models.load_model is b2s.load_model; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
