"""Reading a checkpoint tensor by tensor: a shard missing or truncated, or a header that lies
about a tensor's size, is a one-line error before anything is written."""

import json
import struct

import pytest
import torch

import big2small as b2s
from big2small.errors import Big2SmallError
from big2small.models.checkpoint import open_checkpoint
from big2small.streaming import compress_to_artifact, resume_dir


def _sharded(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model_dir = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=64)).save_pretrained(
        model_dir, max_shard_size="60KB")
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    return model_dir, sorted(set(index["weight_map"].values()))


def test_bad_checkpoints_are_one_line_errors_and_nothing_is_written(tmp_path):
    model_dir, shards = _sharded(tmp_path)
    out = tmp_path / "out.b2s"
    recipe = b2s.make_recipe("uniform", bits=4, min_numel=256)
    last = model_dir / shards[-1]
    data = last.read_bytes()
    last.write_bytes(data[:-10])  # truncated
    with pytest.raises(Big2SmallError, match=f"{shards[-1]}.*not a readable safetensors file"):
        compress_to_artifact(open_checkpoint(model_dir), recipe, out, progress=False)
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [s * 2 for s in header[key]["shape"]]  # a header that lies about a size
    text = json.dumps(header).encode()
    last.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
    with pytest.raises(Big2SmallError, match="not a readable safetensors file"):
        open_checkpoint(model_dir)
    last.unlink()
    with pytest.raises(Big2SmallError, match=f"shard {shards[-1]} is missing"):
        open_checkpoint(model_dir)
    assert not out.exists() and not resume_dir(out).exists()
