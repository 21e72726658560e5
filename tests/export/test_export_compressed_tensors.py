"""compressed-tensors export, checked by its real clients: transformers (with the compressed-tensors
package) loads the directory on CPU and computes our logits; the packing is the package's own."""

import json

import pytest
import torch

import big2small as b2s
from big2small.errors import Big2SmallError
from big2small.export.compressed_tensors import pack_rows


def _load(path, *, dequantize=False):
    """transformers' two ways: compressed in memory (decompressed on the first forward), or
    dequantised while loading. The first mis-shapes packed asymmetric zero-points (transformers
    5.24 with compressed-tensors 0.20.1 allocates them unpacked), so asymmetric exports are read
    the second way; docs/export.md says so."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    extra = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if dequantize else {}
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, **extra).eval()


def _logits(model, inputs):
    with torch.inference_mode():
        return model(input_ids=inputs).logits


@pytest.mark.parametrize("options", [dict(bits=4, group_size=32, symmetric=True),
                                     dict(bits=3, group_size=16, symmetric=False),
                                     dict(bits=8, group_size=0, symmetric=False)])
def test_transformers_loads_the_packed_codes_and_computes_our_logits(make_artifact, tmp_path, inputs, options):
    artifact = make_artifact("uniform", **options)
    out = tmp_path / "ct"
    report = b2s.export(artifact, "compressed-tensors", out, dtype="float32")
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and config["format"] == "pack-quantized"
    (group,) = config["config_groups"].values()
    assert group["weights"]["num_bits"] == options["bits"] and group["weights"]["symmetric"] == options["symmetric"]
    assert len(group["targets"]) == 14 and all(t.exact for t in report.tensors)
    ours = _logits(b2s.restore(artifact), inputs)
    assert torch.allclose(_logits(_load(out, dequantize=True), inputs), ours, atol=1e-5, rtol=1e-5)
    if options["symmetric"]:
        assert torch.allclose(_logits(_load(out), inputs), ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bits", range(1, 9))
def test_packing_is_compressed_tensors_own(bits):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    torch.manual_seed(bits)
    for cols in (32, 45, 96):
        codes = torch.randint(0, 1 << bits, (6, cols))
        signed = (codes - (1 << (bits - 1))).to(torch.int8)  # the package packs signed values, offset
        assert torch.equal(pack_rows(codes, bits), pack_to_int32(signed, bits))
        assert torch.equal(pack_rows(codes.T.contiguous(), bits).T, pack_to_int32(signed, bits, packed_dim=0))


def test_an_artifact_without_uniform_codes_is_refused(make_artifact, tmp_path):
    with pytest.raises(Big2SmallError, match="no Linear weight .* uniform codec"):
        b2s.export(make_artifact("hyper", bits=8), "compressed-tensors", tmp_path / "ct")
    assert not (tmp_path / "ct").exists()
