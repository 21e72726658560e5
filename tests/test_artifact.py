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

    monkeypatch.setattr(artifact_mod, "save_file", boom)
    cm = b2s.compress(small_net, "uniform", progress=False)
    with pytest.raises(OSError):
        b2s.save(cm, tmp_path / "x.b2s")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_artifact(artifact, monkeypatch):
    import big2small.artifact as artifact_mod

    cm, path = artifact
    monkeypatch.setattr(artifact_mod, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        b2s.save(cm, path, overwrite=True)
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
