import json

import pytest
import torch

import big2small as b2s
from big2small.artifact import MANIFEST, TENSORS
from big2small.errors import Big2SmallError


@pytest.fixture(params=[("uniform", {"bits": 3, "group_size": 64}), ("hyper", {"bits": 6}),
                        ("hyper_ref", {"num_inner_list": [225]})], ids=["uniform", "hyper", "hyper_ref"])
def artifact(small_net, tmp_path, request):
    method, options = request.param
    cm = b2s.compress(small_net, method, progress=False, **options)
    b2s.save(cm, tmp_path / "net.b2s")
    return cm, tmp_path / "net.b2s"


def test_round_trip_restores_the_same_decoded_weights(artifact):
    cm, path = artifact
    loaded = b2s.load(path)
    before, after = cm.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_save_refuses_to_overwrite_unless_asked(artifact):
    cm, path = artifact
    with pytest.raises(Big2SmallError, match="exists"):
        b2s.save(cm, path)
    b2s.save(cm, path, overwrite=True)
    assert (path / MANIFEST).is_file()


def test_failed_write_leaves_nothing_behind(small_net, tmp_path, monkeypatch):
    import big2small.artifact as artifact_mod

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(artifact_mod.tensorfile, "write", boom)
    cm = b2s.compress(small_net, "uniform", progress=False)
    one_line_refusal(lambda: b2s.save(cm, tmp_path / "x.b2s"), "cannot write .*x.b2s: disk full")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_artifact(artifact, monkeypatch):
    import big2small.artifact as artifact_mod

    cm, path = artifact
    monkeypatch.setattr(artifact_mod.tensorfile, "write", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    one_line_refusal(lambda: b2s.save(cm, path, overwrite=True), "disk full")
    assert b2s.load(path).tensors.keys() == cm.tensors.keys()


def test_flipped_byte_in_tensor_data_is_rejected(artifact):
    _, path = artifact
    data = bytearray((path / TENSORS).read_bytes())
    data[-10] ^= 0xFF
    (path / TENSORS).write_bytes(bytes(data))
    with pytest.raises(Big2SmallError, match="corrupt artifact.*hash"):
        b2s.load(path)


def test_truncated_tensor_file_is_rejected(artifact):
    _, path = artifact
    data = (path / TENSORS).read_bytes()
    (path / TENSORS).write_bytes(data[: len(data) // 2])
    with pytest.raises(Big2SmallError, match="corrupt artifact"):
        b2s.load(path)


def test_tampered_manifest_is_rejected(artifact):
    _, path = artifact
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["tensors"]["fc.weight"]["config"]["bits"] = 4
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(Big2SmallError, match="manifest does not match"):
        b2s.load(path)


def test_missing_manifest_is_rejected(artifact):
    _, path = artifact
    (path / MANIFEST).unlink()
    with pytest.raises(Big2SmallError, match="not a big2small artifact"):
        b2s.load(path)


def test_missing_path_is_rejected(tmp_path):
    with pytest.raises(Big2SmallError, match="no such artifact"):
        b2s.load(tmp_path / "nope")


def test_loading_never_unpickles(artifact, monkeypatch):
    import pickle

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during load")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    _, path = artifact
    b2s.load(path).state_dict()


def test_module_artifact_needs_a_skeleton_and_rejects_a_wrong_one(artifact):
    _, path = artifact
    with pytest.raises(Big2SmallError, match="skeleton"):
        b2s.restore(path)
    with pytest.raises(Big2SmallError, match="does not match"):
        b2s.restore(path, torch.nn.Linear(4, 4))


def test_restore_into_skeleton_runs(artifact, small_net):
    cm, path = artifact
    model = b2s.restore(path, type(small_net)())
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), cm.apply_to(type(small_net)().eval())(x))


def test_decompress_writes_dense_state_dict_without_model_class(artifact, tmp_path):
    from safetensors.torch import load_file

    cm, path = artifact
    out = b2s.decompress(path, tmp_path / "dense.safetensors")
    dense = load_file(out)
    expected = cm.state_dict()
    assert dense.keys() == expected.keys()
    assert all(torch.equal(dense[k], expected[k]) for k in dense)
    assert dense["fc.weight"].dtype == torch.float32


def test_decompress_in_another_dtype_and_in_shards(small_net, tmp_path):
    from safetensors.torch import load_file

    cm = b2s.compress(small_net, "uniform", bits=4, progress=False)
    b2s.save(cm, tmp_path / "net.b2s")
    expected = {k: v for k, v in cm.state_dict().items() if k not in cm.aliases}
    one = b2s.decompress(tmp_path / "net.b2s", tmp_path / "half.safetensors", dtype="float16")
    half = load_file(one)
    assert all(half[k].dtype == (torch.float16 if v.is_floating_point() else v.dtype) for k, v in expected.items())
    assert all(torch.equal(half[k], v.half() if v.is_floating_point() else v) for k, v in expected.items())
    full_bytes = (b2s.decompress(tmp_path / "net.b2s", tmp_path / "full.safetensors")).stat().st_size
    assert one.stat().st_size < 0.6 * full_bytes  # fp16 halves the weights
    # shards of at most 40 kB of tensors (a bigger tensor alone in its file), and an index naming each tensor's file
    shard_dir = b2s.decompress(tmp_path / "net.b2s", tmp_path / "dense", max_shard_bytes=40_000)
    index = json.loads((shard_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(expected)
    shards = {f: load_file(shard_dir / f) for f in set(index["weight_map"].values())}
    assert len(shards) > 1
    for name, file in index["weight_map"].items():
        assert torch.equal(shards[file][name], expected[name])
    for tensors in shards.values():
        sizes = [t.numel() * t.element_size() for t in tensors.values()]
        assert sum(sizes) <= 40_000 or len(sizes) == 1
    # overwriting replaces a directory decompress wrote, never another one
    b2s.decompress(tmp_path / "net.b2s", shard_dir, max_shard_bytes=10**9, overwrite=True)
    assert sorted(p.name for p in shard_dir.iterdir()) == ["model.safetensors"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    one_line_refusal(lambda: b2s.decompress(tmp_path / "net.b2s", tmp_path / "mine", max_shard_bytes=10**6,
                                            overwrite=True), "not a directory that decompress wrote")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    one_line_refusal(lambda: b2s.decompress(tmp_path / "net.b2s", tmp_path / "x.safetensors", dtype="int8"), "dtype")


def test_sharded_decompress_of_an_hf_model_loads_with_from_pretrained(tiny_gpt2_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    loaded = b2s.load_model(tiny_gpt2_dir)
    cm = b2s.compress(loaded, "uniform", bits=8, group_size=32, min_numel=1024, progress=False)
    b2s.save(cm, tmp_path / "gpt2.b2s")
    out = b2s.decompress(tmp_path / "gpt2.b2s", tmp_path / "dense", dtype="float16", max_shard_bytes=50_000)
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1 and (out / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    restored = b2s.restore(tmp_path / "gpt2.b2s").eval()
    ids = torch.randint(0, 128, (1, 16))
    with torch.no_grad():
        ref, out_logits = restored(ids).logits, model(ids).logits
    assert (out_logits - ref).abs().max() < 1e-2 * ref.abs().max()  # the same model, in fp16 on disk


def test_hf_model_rebuilds_from_artifact_alone(tiny_gpt2_dir, tmp_path):
    loaded = b2s.load_model(tiny_gpt2_dir)
    cm = b2s.compress(loaded, "uniform", bits=8, group_size=32, min_numel=1024, progress=False)
    assert any(e.kind == "conv1d_hf" and e.compressed for e in cm.plan)
    b2s.save(cm, tmp_path / "gpt2.b2s")
    model = b2s.restore(tmp_path / "gpt2.b2s")
    ids = torch.randint(0, 128, (1, 16))
    with torch.no_grad():
        ref = loaded.model(ids).logits
        out = model(ids).logits
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


# --- overwriting: only an artifact, atomically --------------------------------------------------------


def one_line_refusal(call, match):
    with pytest.raises(Big2SmallError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_overwrite_refuses_a_folder_of_user_files_and_keeps_them(small_net, tmp_path):
    cm = b2s.compress(small_net, "uniform", progress=False)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    one_line_refusal(lambda: b2s.save(cm, folder, overwrite=True), "not a big2small artifact")
    assert [p.name for p in folder.iterdir()] == ["holiday.jpg"]
    # an artifact with a user's file put inside it is no longer only an artifact either
    b2s.save(cm, tmp_path / "a.b2s")
    (tmp_path / "a.b2s" / "notes.txt").write_text("mine")
    one_line_refusal(lambda: b2s.save(cm, tmp_path / "a.b2s", overwrite=True), "not a big2small artifact")
    assert (tmp_path / "a.b2s" / "notes.txt").read_text() == "mine"


def test_overwrite_refuses_a_plain_file_and_a_symlink(small_net, tmp_path):
    cm = b2s.compress(small_net, "uniform", progress=False)
    (tmp_path / "f").write_bytes(b"keep me")
    one_line_refusal(lambda: b2s.save(cm, tmp_path / "f", overwrite=True), "not a big2small artifact")
    assert (tmp_path / "f").read_bytes() == b"keep me"
    b2s.save(cm, tmp_path / "real.b2s")
    (tmp_path / "link.b2s").symlink_to(tmp_path / "real.b2s")
    one_line_refusal(lambda: b2s.save(cm, tmp_path / "link.b2s", overwrite=True), "symbolic link")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "link.b2s", "real.b2s"]


def test_decompress_overwrite_replaces_a_file_never_a_directory(artifact, tmp_path):
    _, path = artifact
    (tmp_path / "dir").mkdir()
    one_line_refusal(lambda: b2s.decompress(path, tmp_path / "dir", overwrite=True), "not a file")
    (tmp_path / "dense.safetensors").write_bytes(b"old")
    b2s.decompress(path, tmp_path / "dense.safetensors", overwrite=True)
    assert (tmp_path / "dense.safetensors").read_bytes() != b"old"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_overwriting_an_artifact_replaces_it_and_leaves_nothing_else(small_net, tmp_path):
    path = tmp_path / "a.b2s"
    b2s.save(b2s.compress(small_net, "uniform", bits=2, progress=False), path)
    new = b2s.compress(small_net, "uniform", bits=5, progress=False)
    b2s.save(new, path, overwrite=True)
    assert b2s.load(path).tensors["fc.weight"].config.bits == 5
    assert [p.name for p in tmp_path.iterdir()] == ["a.b2s"]  # no .a.b2s.old-PID, no .a.b2s.tmp-*


def _kill_save_at_every_step(cm, path, *, count_lines_in):
    """Run save(cm, path, overwrite=True) in forked children, killing the k-th child (os._exit,
    no cleanup runs) at the k-th line executed in a function of `count_lines_in`, for k = 0, 1, ...
    until a child finishes; after each, yield what is at `path`."""
    import os
    import sys

    k = 0
    while True:
        pid = os.fork()
        if pid == 0:  # the child: count lines, die at line k
            seen = [0]

            def tracer(frame, event, arg):
                if frame.f_code.co_name not in count_lines_in:
                    return None
                if event == "line":
                    if seen[0] == k:
                        os._exit(9)
                    seen[0] += 1
                return tracer

            code = 1
            sys.settrace(tracer)
            try:
                b2s.save(cm, path, overwrite=True)
                code = 0
            finally:
                sys.settrace(None)
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        yield os.waitstatus_to_exitcode(status) == 0
        k += 1
        if os.waitstatus_to_exitcode(status) == 0:
            return


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_a_kill_at_any_step_of_a_replacement_leaves_an_artifact_and_the_next_save_cleans_up(
        tmp_path, monkeypatch, exchange):
    """With the swap (Linux renameat2), the old or the new artifact is at the path after every
    kill; without it (other systems), a kill between its two renames leaves the old one aside,
    and the next save to the directory puts it back. Either way nothing else stays."""
    import big2small.atomic as atomic

    if exchange and atomic._RENAMEAT2 is None:
        pytest.skip("no renameat2 here")
    if not exchange:
        monkeypatch.setattr(atomic, "_RENAMEAT2", None)
    torch.manual_seed(0)
    old, new = (b2s.compress(torch.nn.Linear(64, 64), "uniform", bits=b, min_numel=0, progress=False) for b in (2, 5))
    path = tmp_path / "a.b2s"
    b2s.save(old, path)
    bits = {2: "old", 5: "new"}
    seen = []
    steps = ("save", "_publish", "publish", "remove_stale", "_remove", "_renameat2")
    for done in _kill_save_at_every_step(new, path, count_lines_in=steps):
        if not path.exists():
            assert not exchange
            atomic.remove_stale(tmp_path)  # what the next save does first
        seen.append(bits[b2s.load(path).tensors["weight"].config.bits])
        if not done and seen[-1] == "new":
            b2s.save(old, path, overwrite=True)  # start the next kill from the old artifact again
    assert seen[-1] == "new" and "old" in seen and len(seen) > 10
    b2s.save(new, path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["a.b2s"]


def test_stale_temporaries_are_removed_by_the_next_save_and_only_they(small_net, tmp_path):
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".x.b2s.tmp-{dead_pid}-0123abcd"
    stale.mkdir()
    (stale / "tensors.safetensors").write_bytes(b"\0" * 1000)
    stale_file = tmp_path / f".d.safetensors.tmp-{dead_pid}-89abcdef"
    stale_file.write_bytes(b"partial")
    live = tmp_path / f".y.b2s.tmp-{os.getpid()}-0123abcd"  # a writer still running
    live.mkdir()
    mine = [tmp_path / ".x.b2s.tmp-notes", tmp_path / f".x.b2s.tmp-{dead_pid}", tmp_path / "x.b2s.tmp-1-0123abcd"]
    for p in mine:
        p.write_text("a user's file")
    b2s.save(b2s.compress(small_net, "uniform", progress=False), tmp_path / "z.b2s")
    assert not stale.exists() and not stale_file.exists()
    assert live.is_dir() and all(p.read_text() == "a user's file" for p in mine)


def test_a_temporary_directory_is_never_taken_for_an_artifact(artifact):
    import shutil

    _, path = artifact
    tmp = path.with_name(f".{path.name}.tmp-123-0123abcd")
    shutil.copytree(path, tmp)
    one_line_refusal(lambda: b2s.load(tmp), "temporary directory")


# --- what a manifest may say ------------------------------------------------------------------------------


def test_a_relabelled_array_dtype_is_refused_by_load_and_verify(artifact):
    from artifact_surgery import relabel

    from artifact_surgery import read_tensor_file

    _, path = artifact
    header, _ = read_tensor_file(path / TENSORS)
    key = sorted(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F16")[0]
    relabel(path, key, dtype="I16")  # the same bytes, read as integers
    one_line_refusal(lambda: b2s.load(path), "corrupt artifact: array .* is int16 .* float16")
    one_line_refusal(lambda: b2s.verify_artifact(path), "corrupt artifact")


@pytest.mark.parametrize("reshape", [lambda s: [s[0] * s[1]], lambda s: [s[1], s[0]], lambda s: [1, *s]],
                         ids=["flat", "swapped", "extra-dim"])
def test_a_relabelled_array_shape_is_refused_in_one_line(artifact, reshape):
    from artifact_surgery import relabel

    _, path = artifact
    relabel(path, "embed.weight::values", shape=reshape([300, 32]))  # kept raw, [300, 32]
    one_line_refusal(lambda: b2s.load(path), r"corrupt artifact: array embed.weight::values is float16 \[")


def test_format_version_1_artifacts_have_their_arrays_checked_by_their_method(artifact):
    """Version 1 recorded no dtype or shape per array: each method's stored form still catches a relabel."""
    from artifact_surgery import edit_manifest, relabel

    cm, path = artifact

    def as_version_1(m):
        m["format_version"] = 1
        for e in m["tensors"].values():
            for info in e["stored"].values():
                del info["dtype"], info["shape"]

    edit_manifest(path, as_version_1)
    assert torch.equal(b2s.load(path).state_dict()["fc.weight"], cm.state_dict()["fc.weight"])
    relabel(path, "fc.bias::values", dtype="I16")
    one_line_refusal(lambda: b2s.load(path), "raw: array values is int16")


def _edit(path, change):
    from artifact_surgery import edit_manifest

    edit_manifest(path, change)


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(m):
        node = m
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return change


def _tensor(name, change):
    return lambda m: change(m["tensors"][name])


RESEALED = {
    # what the issue found decoding silently to wrong weights or ending in a traceback
    "deleted tensor": (lambda m: m["tensors"].pop("fc.bias"), "fc.bias::values belongs to no tensor"),
    "renamed tensors": (lambda m: m["tensors"].update({"fc.weight": m["tensors"]["head.weight"],
                                                       "head.weight": m["tensors"]["fc.weight"]}), "is not its own"),
    "alias to nothing": (_set("aliases", "tied.weight", "missing.weight"), "is not a stored tensor"),
    "alias that is a tensor": (_set("aliases", "fc.bias", "fc.weight"), "cannot also be a stored tensor"),
    "dtype to integer": (_tensor("fc.weight", _set("dtype", "int16")), "a compressed tensor is a floating tensor"),
    "dtype unknown": (_tensor("fc.weight", _set("dtype", "float8")), "unknown dtype"),
    "transposed conv": (_tensor("conv.weight", _set("transposed", True)), "only a 2-D tensor"),
    "transposed fc": (_tensor("fc.weight", _set("transposed", True)), "corrupt artifact"),
    "transposed as 1": (_tensor("fc.weight", _set("transposed", 1)), "expected bool"),
    "shape grown": (_tensor("fc.weight", _set("shape", [80, 385])), "corrupt artifact"),
    "shape dropped": (_tensor("fc.weight", _set("shape", [80])), "corrupt artifact"),
    "shape null": (_tensor("fc.weight", lambda e: e["shape"].__setitem__(0, None)), "expected int"),
    "shape huge": (_tensor("fc.weight", _set("shape", [10**6, 10**6])), "corrupt artifact"),
    "unknown key": (_tensor("fc.weight", _set("extra", 1)), "unknown key"),
    "missing key": (_tensor("fc.weight", lambda e: e.pop("bits")), "missing bits"),
    "config unknown option": (_tensor("fc.weight", lambda e: e["config"].update(colour=1)), "unknown option"),
    "config wrong type": (_tensor("fc.weight", lambda e: e["config"].update(bits="3")), "bits must be int"),
    "config float for int": (_tensor("fc.weight", lambda e: e["config"].update(bits=3.5)), "bits must be int"),
    "config other method": (_tensor("fc.weight", _set("method", "lowrank")), "but its config is"),
    "stored key swapped": (_tensor("fc.weight", lambda e: e["stored"]["scales"].update(key="fc.bias::values")),
                           "is not its own"),
    "file outside": (_set("files", "../outside.txt", {"bytes": 1, "sha256": "0" * 64}), "not a file name inside source/"),
    "file absolute": (_set("files", "/etc/hostname", {"bytes": 1, "sha256": "0" * 64}), "not a file name inside source/"),
    "size record": (_set("size", "bits_total", 12345), "size record"),
    "version as bool": (_set("format_version", True), "format version True is not supported"),
    "source unknown key": (_set("source", {"kind": "module", "name": "x", "run": "rm"}), "unknown key"),
}


@pytest.mark.parametrize("edit", RESEALED, ids=list(RESEALED))
def test_a_resealed_manifest_edit_is_refused_in_one_line(small_net, tmp_path, edit):
    """The attacker recomputes the manifest hash; the schema, the array ownership, each method's
    stored form and the size record still refuse the edit."""
    cm = b2s.compress(small_net, "uniform", bits=3, group_size=64, progress=False)
    path = tmp_path / "net.b2s"
    b2s.save(cm, path)
    change, match = RESEALED[edit]
    _edit(path, change)
    one_line_refusal(lambda: b2s.load(path).state_dict(), match)


def test_deeply_nested_json_is_refused_before_parsing(artifact):
    from artifact_surgery import reseal

    _, path = artifact
    reseal(path, b'{"format": "big2small", "format_version": 2, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    one_line_refusal(lambda: b2s.load(path), "nests 100001 levels deep")


@pytest.mark.parametrize("group_size, shape", [(10**12, None), (3 * 10**8, None), (64, [10**6, 10**6])])
def test_sizes_that_the_arrays_cannot_hold_are_refused_before_any_allocation(small_net, tmp_path, group_size, shape):
    """Even with the bit ledger made to agree (bits_for of the edited config), the arrays on disk do
    not hold what the config and shape describe: refused before decoding allocates anything."""
    from big2small.generators import UniformConfig, UniformGenerator
    from big2small.layout import MatrixLayout

    cm = b2s.compress(small_net, "uniform", bits=3, group_size=64, progress=False)
    path = tmp_path / "net.b2s"
    b2s.save(cm, path)
    config = UniformConfig(bits=3, group_size=group_size)
    layout = MatrixLayout(tuple(shape or cm.tensors["fc.weight"].layout.shape))
    n_groups_bits = UniformGenerator.bits_for(config, layout) - layout.numel * 3 - 128

    def change(m):
        e = m["tensors"]["fc.weight"]
        e["config"]["group_size"], e["shape"] = group_size, list(layout.shape)
        e["bits"] = {"codes": layout.numel * 3, "scales": n_groups_bits * 16 // 19, "zeros": n_groups_bits * 3 // 19,
                     "header": 128}

    _edit(path, change)
    one_line_refusal(lambda: b2s.load(path).state_dict(), "corrupt artifact: tensor fc.weight: uniform")


def test_a_source_file_symlinked_outside_is_refused(tiny_gpt2_dir, tmp_path):
    loaded = b2s.load_model(tiny_gpt2_dir)
    cm = b2s.compress(loaded, "uniform", bits=8, group_size=32, min_numel=1024, progress=False)
    path = tmp_path / "gpt2.b2s"
    b2s.save(cm, path)
    inside = path / "source" / "config.json"
    outside = tmp_path / "outside.json"
    outside.write_bytes(inside.read_bytes())  # same bytes, same hash: only the link gives it away
    inside.unlink()
    inside.symlink_to(outside)
    one_line_refusal(lambda: b2s.load(path), "source/config.json is a link")
    inside.unlink()
    inside.write_bytes(outside.read_bytes())
    (path / "source" / "extra.py").write_text("import os")
    one_line_refusal(lambda: b2s.load(path), "source/extra.py is not in the manifest")


def test_verify_fails_when_the_artifact_lacks_a_tensor_of_the_model(tmp_path):
    """A tensor of the original model that the artifact does not hold (deleted from the manifest and
    the tensor file alike): load cannot know, verify against the model must say so."""
    from safetensors.torch import load_file, save_file

    from artifact_surgery import edit_manifest

    torch.manual_seed(0)
    weights = {"a.weight": torch.randn(64, 64), "b.weight": torch.randn(64, 64), "b.bias": torch.randn(64)}
    save_file(weights, str(tmp_path / "model.safetensors"))
    path = tmp_path / "m.b2s"
    b2s.save(b2s.compress(b2s.load_model(tmp_path / "model.safetensors"), "uniform", min_numel=0, progress=False), path)
    arrays = load_file(path / TENSORS)
    save_file({k: v for k, v in arrays.items() if not k.startswith("b.bias")}, str(path / TENSORS))

    def drop(m):
        del m["tensors"]["b.bias"]
        m["size"]["bits_total"] -= 64 * 16
        m["size"]["bits_raw"] -= 64 * 16
        assert m["size"]["bits_by_item"].pop("raw") == 64 * 16  # b.bias was the one raw tensor

    edit_manifest(path, drop)
    assert "b.bias" not in b2s.load(path).tensors  # a consistent artifact of two tensors
    one_line_refusal(lambda: b2s.verify_artifact(path), "lacks 1 tensor.* b.bias")


def test_decompress_and_inspect_hold_one_tensor_at_a_time(small_net, tmp_path, monkeypatch):
    """Streaming: decompress decodes each tensor when its turn comes and drops it before the next
    (the dense model is never held), and its output is the decoded model."""
    import weakref

    import big2small.artifact as artifact_mod
    from safetensors.torch import load_file

    cm = b2s.compress(small_net, "uniform", bits=4, group_size=64, min_numel=64, progress=False)
    b2s.save(cm, tmp_path / "a.b2s")
    live, most = set(), [0]
    real_decode = artifact_mod.decode

    def counted(enc):
        t = real_decode(enc)
        live.add(id(t))
        most[0] = max(most[0], len(live))
        weakref.finalize(t, live.discard, id(t))
        return t

    monkeypatch.setattr(artifact_mod, "decode", counted)
    out = b2s.decompress(tmp_path / "a.b2s", tmp_path / "dense.safetensors")
    assert most[0] == 1 and len(cm.tensors) > 2
    dense = load_file(out)
    assert dense.keys() == cm.state_dict().keys()
    assert all(torch.equal(dense[n], t) for n, t in cm.state_dict().items())
    assert b2s.inspect_artifact(tmp_path / "a.b2s").stored.size.bits_total == cm.size().bits_total
