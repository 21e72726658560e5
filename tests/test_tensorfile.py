"""The streaming safetensors writer: safetensors reads back exactly what it wrote."""

import pytest
import torch
from safetensors import safe_open

from big2small import tensorfile


def test_safetensors_reads_back_every_array_dtype_and_the_metadata(tmp_path):
    g = torch.Generator().manual_seed(0)
    arrays = {
        "w::codes": torch.randint(0, 255, (7, 5), generator=g, dtype=torch.uint8),
        "w::scale": torch.randn(7, 1, generator=g).half(),
        "b": torch.randn(3, generator=g),
        "bf": torch.randn(2, 2, generator=g).bfloat16(),
        "i": torch.arange(4, dtype=torch.int64),
        "flag": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
        "d": torch.randn(3, generator=g, dtype=torch.float64),
    }
    path = tmp_path / "t.safetensors"
    size = tensorfile.write_arrays(path, arrays, {"k": "v"})
    assert size == path.stat().st_size
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"k": "v"}
        assert set(f.keys()) == set(arrays)
        for k, t in arrays.items():
            assert torch.equal(f.get_tensor(k), t), k
            assert f.get_tensor(k).dtype == t.dtype


def test_same_arrays_same_order_same_bytes_and_a_lying_array_is_refused(tmp_path):
    arrays = {"a": torch.ones(3), "b": torch.zeros(2, dtype=torch.uint8)}
    tensorfile.write_arrays(tmp_path / "1", arrays)
    tensorfile.write_arrays(tmp_path / "2", dict(arrays))
    assert (tmp_path / "1").read_bytes() == (tmp_path / "2").read_bytes()
    specs = [tensorfile.ArraySpec("a", torch.float32, (4,))]
    with pytest.raises(ValueError, match="its spec"):
        tensorfile.write(tmp_path / "3", specs, lambda key: torch.ones(3))


def test_arrays_copied_from_another_file_give_the_bytes_of_the_arrays_written_from_memory(tmp_path):
    g = torch.Generator().manual_seed(1)
    first = {"a::codes": torch.randint(0, 255, (9, 4), generator=g, dtype=torch.uint8),
             "a::scale": torch.randn(9, 1, generator=g).half(), "empty": torch.zeros(0, 2)}
    second = {"b": torch.randn(5, generator=g).bfloat16()}
    tensorfile.write_arrays(tmp_path / "u1", first, {"unit": "1"})
    tensorfile.write_arrays(tmp_path / "u2", second)
    where = tensorfile.arrays_in(tmp_path / "u1") | tensorfile.arrays_in(tmp_path / "u2")
    assert set(where) == set(first) | set(second)
    arrays = first | second
    order = ["b", "a::scale", "empty", "a::codes"]  # another order than the files': offsets, not positions
    specs = [tensorfile.ArraySpec.of(k, arrays[k]) for k in order]
    tensorfile.write(tmp_path / "copied", specs, where.__getitem__, {"k": "v"})
    tensorfile.write(tmp_path / "direct", specs, arrays.__getitem__, {"k": "v"})
    assert (tmp_path / "copied").read_bytes() == (tmp_path / "direct").read_bytes()
    wrong = [tensorfile.ArraySpec("b", torch.float16, (5,))]  # what the file holds is checked against the spec
    with pytest.raises(ValueError, match="its spec"):
        tensorfile.write(tmp_path / "bad", wrong, where.__getitem__)
