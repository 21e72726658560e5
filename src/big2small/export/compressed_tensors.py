"""compressed-tensors ("pack-quantized"), the format vLLM and transformers load, for the uniform codec.

For each Linear weight stored by our uniform codec, the directory's safetensors hold

    {module}.weight_packed      int32 [rows, ceil(cols * b / 32)]: the b-bit codes of each row packed
                                densely, LSB first (value k at bits [k b, k b + b) of the row's stream)
    {module}.weight_scale       [rows, cols / g] (g = group size; one column per channel when 0)
    {module}.weight_zero_point  int32 [ceil(rows * b / 32), cols / g], asymmetric only: zero-points
                                packed the same way down each column
    {module}.weight_shape       int64 [2]

and `config.json` gains a `quantization_config` (quant_method "compressed-tensors", format
"pack-quantized", one config group per distinct (bits, group size, symmetric) with its modules as
targets). compressed-tensors stores signed values v in -2^(b-1)..2^(b-1)-1 packed as v + 2^(b-1),
and dequantises (v - zp) s: our codes c and zero-points z are exactly those packed values
(v = c - 2^(b-1), zp = z - 2^(b-1), symmetric zp = 0), so no weight is re-quantised. The scales
keep their fp16 values, stored in the model's dtype (`dtype`), so that the dequantisation runs there.
Every other tensor is written dense in `dtype`. Rows must hold whole groups.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from big2small import bitpack
from big2small.compress import CompressedModel
from big2small.errors import Big2SmallError
from big2small.export.hf import copy_tokenizer_files, dense_tensors, restored_model
from big2small.export.ggml_blocks import rotated
from big2small.export.records import ExportedTensor
from big2small.generators.base import Encoded
from big2small.generators.raw import STORAGE_DTYPES
from big2small.generators.uniform import UniformConfig


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned b-bit integers [rows, n] -> int32 [rows, ceil(n b / 32)], each row's stream LSB-first."""
    rows, n = values.shape
    padded = -(-n // 32) * 32  # 32 values of b bits fill b whole words
    stream = bitpack.pack(torch.nn.functional.pad(values, (0, padded - n)), bits).reshape(rows, padded * bits // 8)
    packed = stream[:, : -(-n * bits // 32) * 4]
    return packed.contiguous().view(torch.int32)


def _packable(name: str, enc: Encoded) -> bool:
    cfg = enc.config
    if enc.method != "uniform" or not isinstance(cfg, UniformConfig) or rotated(cfg) or not name.endswith(".weight"):
        return False
    g = cfg.group_size or enc.layout.cols
    return len(enc.layout.shape) == 2 and not enc.layout.transposed and enc.layout.cols % g == 0


def _scheme(cfg: UniformConfig) -> dict:
    return {"num_bits": cfg.bits, "type": "int", "symmetric": cfg.symmetric,
            "strategy": "group" if cfg.group_size else "channel",
            "group_size": cfg.group_size or None, "dynamic": False, "observer": "minmax"}


def write(cm: CompressedModel, directory: Path, *, dtype: str) -> list[ExportedTensor]:
    """The compressed-tensors directory at `directory` (a fresh temporary directory: the caller
    publishes it). Refuses an artifact with no uniform-coded Linear weight."""
    if dtype not in STORAGE_DTYPES:
        raise Big2SmallError(f"compressed-tensors: dtype must be one of {', '.join(sorted(STORAGE_DTYPES))}, got {dtype!r}")
    torch_dtype = STORAGE_DTYPES[dtype]
    model = restored_model(cm)
    linear = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    packed = {n: e for n, e in cm.tensors.items() if n in linear and _packable(n, e)}
    if not packed:
        raise Big2SmallError("compressed-tensors: no Linear weight of this artifact is stored by the uniform codec "
                             "with whole groups per row; export it with --to hf or --to gguf")
    state: dict[str, torch.Tensor] = {}
    groups: dict[str, dict] = {}
    dense = model.state_dict()
    report = dense_tensors(cm, dense, dtype)
    report = [t for t in report if t.name not in packed]
    for name, t in dense.items():
        if name in cm.aliases and cm.aliases[name] in state:
            continue  # tied: saved once, as transformers does
        if name not in packed:
            state[name] = t.to(torch_dtype).contiguous()
            continue
        enc = packed[name]
        cfg: UniformConfig = enc.config
        module = name.removesuffix(".weight")
        rows, cols = enc.layout.rows, enc.layout.cols
        n_groups = cols // (cfg.group_size or cols)
        codes = bitpack.unpack(enc.tensors["codes"], cfg.bits, rows * cols).reshape(rows, cols)
        state[f"{module}.weight_packed"] = pack_rows(codes, cfg.bits)
        state[f"{module}.weight_scale"] = enc.tensors["scales"].reshape(rows, n_groups).to(torch_dtype)
        state[f"{module}.weight_shape"] = torch.tensor([rows, cols], dtype=torch.int64)
        if not cfg.symmetric:
            zeros = bitpack.unpack(enc.tensors["zeros"], cfg.bits, rows * n_groups).reshape(rows, n_groups)
            state[f"{module}.weight_zero_point"] = pack_rows(zeros.T.contiguous(), cfg.bits).T.contiguous()
        key = json.dumps(_scheme(cfg), sort_keys=True)
        groups.setdefault(key, {"targets": [], "weights": _scheme(cfg)})["targets"].append(module)
        report.append(ExportedTensor(name, module, f"int{cfg.bits}-{'sym' if cfg.symmetric else 'asym'}-"
                                     f"{'g' + str(cfg.group_size) if cfg.group_size else 'channel'}", True))
    config = model.config.to_dict()
    config["dtype"] = dtype
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
        "config_groups": {f"group_{i}": {**g, "input_activations": None, "output_activations": None,
                                         "format": "pack-quantized"} for i, g in enumerate(groups.values())},
        "ignore": [], "kv_cache_scheme": None,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    copy_tokenizer_files(cm, directory)
    return report
