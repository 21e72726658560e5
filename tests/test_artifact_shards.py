"""Sharded artifacts: past --max-shard-size the arrays go into tensors-0000k-of-0000N.safetensors
files listed in the manifest (format 3). Everything that reads an artifact reads them as it reads
one tensor file; the bytes on disk still add up to the stored bits plus the headers; a missing,
truncated, linked or misnamed shard is a one-line refusal; under the shard size nothing changes."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

import big2small as b2s
from artifact_surgery import edit_manifest, read_tensor_file
from big2small.artifact import MANIFEST, TENSORS
from big2small.errors import Big2SmallError
from big2small.models.checkpoint import open_checkpoint
from big2small.streaming import compress_to_artifact
from test_artifact import one_line_refusal

RECIPE = dict(bits=4, group_size=64, min_numel=256)
SHARD = "12KB"  # each 96x128 layer stores about 6.9 kB: a few layers per shard


def _bytes(path):
    return {f.relative_to(path).as_posix(): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture
def state_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    state = {f"layers.{i}.weight": torch.randn(96, 128, generator=g) for i in range(6)}
    state["norm.weight"] = torch.ones(128)
    save_file(state, str(tmp_path / "model.safetensors"))
    return tmp_path / "model.safetensors"


@pytest.fixture
def pair(state_file, tmp_path):
    """The same model saved whole and sharded."""
    cm = b2s.compress(b2s.load_model(state_file), "uniform", progress=False, **RECIPE)
    b2s.save(cm, tmp_path / "one.b2s")
    b2s.save(cm, tmp_path / "shards.b2s", max_shard_size=SHARD)
    return tmp_path / "one.b2s", tmp_path / "shards.b2s"


def _shards(path):
    return sorted(p.name for p in path.glob("tensors-*.safetensors"))


def test_a_sharded_artifact_lists_its_shards_and_reads_as_the_whole_one(pair, state_file, tmp_path):
    one, shards = pair
    names = _shards(shards)
    manifest = json.loads((shards / MANIFEST).read_text())
    assert len(names) >= 3 and manifest["tensor_files"] == names and manifest["format_version"] == 3
    assert not (shards / TENSORS).exists() and "tensor_files" not in json.loads((one / MANIFEST).read_text())
    for name in names:  # each shard within the size, unless it holds one larger array
        header, data = read_tensor_file(shards / name)
        assert len(data) <= 12_000 or len([k for k in header if k != "__metadata__"]) == 1
    whole, sharded = b2s.load(one).state_dict(), b2s.load(shards).state_dict()
    assert whole.keys() == sharded.keys() and all(torch.equal(whole[k], sharded[k]) for k in whole)
    b2s.decompress(one, tmp_path / "one.safetensors")
    b2s.decompress(shards, tmp_path / "shards.safetensors")
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "shards.safetensors").read_bytes()
    a, b = b2s.verify_artifact(one, str(state_file)), b2s.verify_artifact(shards, str(state_file))
    assert a.weight_error.table() == b.weight_error.table() and b.outcome == "measured"
    x = torch.randn(3, 128)
    model = b2s.restore(shards, skeleton=torch.nn.ModuleDict(
        {"layers": torch.nn.ModuleList([torch.nn.Linear(128, 96, bias=False) for _ in range(6)]),
         "norm": torch.nn.LayerNorm(128, bias=False)}))
    assert torch.equal(model["layers"][2](x), x @ whole["layers.2.weight"].T)


def test_the_bytes_on_disk_are_the_stored_arrays_plus_each_files_header(pair):
    """tensor_file_bytes is every tensor file's size; past the headers, the files hold exactly the
    stored arrays' bytes (as the manifest records them), sharded or not; the size ledger agrees."""
    from big2small.dtypes import STORED_DTYPES

    reports = {p: b2s.inspect_artifact(p) for p in pair}
    for path, report in reports.items():
        files = [path / n for n in (_shards(path) or [TENSORS])]
        on_disk = report.stored.bytes_on_disk
        assert on_disk.tensor_file_bytes == sum(f.stat().st_size for f in files)
        headers = sum(8 + int.from_bytes(f.read_bytes()[:8], "little") for f in files)
        arrays = {a["key"]: a for r in json.loads((path / MANIFEST).read_text())["tensors"].values()
                  for a in r["stored"].values()}
        array_bytes = sum(torch.empty(a["shape"], dtype=STORED_DTYPES[a["dtype"]]).nbytes for a in arrays.values())
        assert on_disk.tensor_file_bytes - headers == array_bytes
    one, shards = pair
    assert reports[one].stored.size == reports[shards].stored.size
    assert reports[one].to_dict()["tensors"] == reports[shards].to_dict()["tensors"]


def test_under_the_shard_size_the_artifact_is_the_single_file_one_byte_for_byte(state_file, tmp_path):
    cm = b2s.compress(b2s.load_model(state_file), "uniform", progress=False, **RECIPE)
    b2s.save(cm, tmp_path / "default.b2s")
    b2s.save(cm, tmp_path / "big.b2s", max_shard_size="1GB")
    assert _bytes(tmp_path / "default.b2s") == _bytes(tmp_path / "big.b2s")
    assert json.loads((tmp_path / "default.b2s" / MANIFEST).read_text())["format_version"] == 2


def test_streamed_sharded_compress_is_the_in_memory_one_and_resumes_to_the_same_bytes(pair, state_file, tmp_path,
                                                                                        monkeypatch):
    import big2small.streaming as streaming

    recipe = b2s.make_recipe("uniform", **RECIPE)
    shard_bytes = 12_000
    compress_to_artifact(open_checkpoint(state_file), recipe, tmp_path / "stream.b2s", progress=False,
                         max_shard_bytes=shard_bytes)
    assert _bytes(tmp_path / "stream.b2s") == _bytes(pair[1])
    real_encode, done = streaming.encode_unit, []

    def encode_then_die(unit, *args, **kwargs):
        if len(done) == 3:
            raise KeyboardInterrupt  # stands for a kill between two units
        done.append(unit)
        return real_encode(unit, *args, **kwargs)

    monkeypatch.setattr(streaming, "encode_unit", encode_then_die)
    out = tmp_path / "resumed.b2s"
    with pytest.raises(KeyboardInterrupt):
        compress_to_artifact(open_checkpoint(state_file), recipe, out, progress=False, max_shard_bytes=shard_bytes)
    assert not out.exists()
    monkeypatch.setattr(streaming, "encode_unit", real_encode)
    compress_to_artifact(open_checkpoint(state_file), recipe, out, progress=False, max_shard_bytes=shard_bytes)
    assert _bytes(out) == _bytes(pair[1])


def test_a_missing_truncated_or_linked_shard_is_a_one_line_refusal(pair, tmp_path):
    import shutil

    _, shards = pair
    second = _shards(shards)[1]
    for damage, match in [
        (lambda p: (p / second).unlink(), f"{second} is missing"),
        (lambda p: (p / second).write_bytes((p / second).read_bytes()[:-100]), f"tensor file unreadable \\({second}"),
        (lambda p: ((p / second).rename(tmp_path / "elsewhere"), os.symlink(tmp_path / "elsewhere", p / second)),
         f"{second} is a symbolic link"),
    ]:
        copy = tmp_path / "damaged.b2s"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(shards, copy)
        damage(copy)
        for read in (b2s.load, b2s.inspect_artifact, b2s.verify_artifact, b2s.restore,
                     lambda p: b2s.decompress(p, tmp_path / "out.safetensors")):
            one_line_refusal(lambda: read(copy), match)
        assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("files", [
    ["../tensors-00001-of-00002.safetensors", "tensors-00002-of-00002.safetensors"],
    ["/tmp/tensors-00001-of-00002.safetensors", "tensors-00002-of-00002.safetensors"],
    ["tensors-00001-of-00002.safetensors"],
    "tensors.safetensors",
])
def test_a_manifest_naming_other_tensor_files_is_refused(pair, files):
    _, shards = pair
    edit_manifest(shards, lambda m: m.update(tensor_files=files))
    one_line_refusal(lambda: b2s.load(shards), "corrupt artifact: tensor_files")


def test_overwrite_replaces_a_sharded_artifact_and_the_cli_writes_one(pair, state_file, tmp_path):
    from test_cli import assert_one_line_error, run

    one, shards = pair
    art = tmp_path / "cli.b2s"
    r = run("compress", state_file, "-o", art, "--bits", "4", "-O", "group_size=64", "--min-numel", "256",
            "--max-shard-size", "12KB")
    assert r.returncode == 0, r.stderr
    assert _bytes(art) == _bytes(shards)  # what save(..., max_shard_size="12KB") wrote
    cm = b2s.load(one)
    b2s.save(cm, shards, overwrite=True)  # a sharded artifact is an artifact: it may be replaced
    assert (shards / TENSORS).is_file() and not _shards(shards)
    assert run("verify", art).returncode == 0
    assert_one_line_error(run("compress", state_file, "-o", tmp_path / "x.b2s", "--max-shard-size", "lots"), "bad size")
    with pytest.raises(Big2SmallError, match="max_shard_size: bad size"):
        b2s.save(cm, tmp_path / "y.b2s", max_shard_size="-1GB")


def test_export_reads_a_sharded_artifact_as_the_whole_one(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from big2small.export import export

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                 max_position_embeddings=64)).save_pretrained(tmp_path / "llama")
    cm = b2s.compress(b2s.load_model(tmp_path / "llama"), "uniform", progress=False, **RECIPE)
    b2s.save(cm, tmp_path / "one.b2s")
    b2s.save(cm, tmp_path / "shards.b2s", max_shard_size="8KB")
    assert len(_shards(tmp_path / "shards.b2s")) > 2
    for name in ("one", "shards"):
        export(tmp_path / f"{name}.b2s", "hf", tmp_path / f"{name}-hf")
    assert _bytes(tmp_path / "one-hf") == _bytes(tmp_path / "shards-hf")


def test_a_disk_that_fills_up_while_shards_or_a_dense_file_are_written_leaves_nothing(pair, state_file, tmp_path,
                                                                                      monkeypatch):
    import errno

    import big2small.tensorfile as tensorfile

    one, _ = pair
    cm = b2s.load(one)
    real_write, written = tensorfile.write, []

    def fill_up(path, *args, **kwargs):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(tensorfile, "write", fill_up)
    one_line_refusal(lambda: b2s.save(cm, tmp_path / "full.b2s", max_shard_size=SHARD), "the disk is full")
    written.clear()
    one_line_refusal(lambda: b2s.decompress(one, tmp_path / "dense", max_shard_bytes=20_000), "the disk is full")
    assert not (tmp_path / "full.b2s").exists() and not (tmp_path / "dense").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left behind


def test_a_tensor_file_beside_the_shards_is_refused(pair):
    one, shards = pair
    (shards / TENSORS).write_bytes((one / TENSORS).read_bytes())
    one_line_refusal(lambda: b2s.load(shards), f"{TENSORS} beside the shards")
