"""An HF directory's skeleton description comes from the cache when its config was seen before:
the same description as building the skeleton, without importing transformers (nor numba, which
encoding does not need) in the process that opens the checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from big2small.models import skeleton as sk
from big2small.models.checkpoint import open_checkpoint


def _gpt2_dir(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    path = tmp_path / "gpt2"  # tied embeddings and HF Conv1D layers: aliases and kinds to get right
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=64)).save_pretrained(path)
    return path


def _infos(path):
    return [(i.name, i.shape, i.dtype, i.kind, i.is_parameter, i.aliases) for i in open_checkpoint(path).infos]


def test_the_cached_description_is_the_built_one(tmp_path, monkeypatch):
    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path / "cache"))
    path = _gpt2_dir(tmp_path)
    built = sk._build(path)
    assert any(t.aliases for t in built.tensors) and any(t.kind == "conv1d_hf" for t in built.tensors)
    fresh = _infos(path)  # builds and stores the entry
    entries = list((tmp_path / "cache" / "skeletons").glob("*.json"))
    assert len(entries) == 1
    assert sk._read(entries[0]) == built
    assert _infos(path) == fresh  # from the entry
    entries[0].write_text("{not json")  # a damaged entry is built again, and replaced
    assert _infos(path) == fresh and sk._read(entries[0]) == built


def test_a_changed_config_is_described_afresh(tmp_path, monkeypatch):
    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path / "cache"))
    path = _gpt2_dir(tmp_path)
    before = sk.describe_hf_dir(path)
    config = json.loads((path / "config.json").read_text())
    config["tie_word_embeddings"] = False  # the head becomes a tensor of its own
    (path / "config.json").write_text(json.dumps(config))
    after = sk.describe_hf_dir(path)
    assert len(list((tmp_path / "cache" / "skeletons").glob("*.json"))) == 2
    assert after == sk._build(path) and after != before


def test_a_cached_open_imports_neither_transformers_nor_numba(tmp_path):
    path = _gpt2_dir(tmp_path)
    env = {**os.environ, "BIG2SMALL_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(Path(sk.__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    code = ("import sys; from big2small.models.checkpoint import open_checkpoint; import big2small.streaming; "
            f"n = len(open_checkpoint({str(path)!r}).infos); "
            "print(n, 'transformers' in sys.modules, 'numba' in sys.modules)")
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
            for _ in range(2)]
    assert runs[0][0] == runs[1][0] and runs[0][1] == "True"  # the first run built the skeleton
    assert runs[1][1:] == ["False", "False"]


def test_an_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    path = _gpt2_dir(tmp_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("BIG2SMALL_CACHE", str(blocker / "cache"))  # cannot be created: a file is in the way
    assert sk.describe_hf_dir(path) == sk._build(path)
