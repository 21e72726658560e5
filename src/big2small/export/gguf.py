"""GGUF for llama.cpp (and Ollama on top of it): LLaMA-architecture models.

Each tensor is written in the GGUF type that holds it without re-quantising when one exists
(big2small.export.ggml_blocks: uniform group-32 codes as Q4_0/Q5_0/Q8_0, and as Q4_1/Q5_1 where
every block's offset is an fp16 number; kept float tensors at their own float type; norms in F32,
which llama.cpp needs). Every other tensor is decoded and re-quantised to the `fallback` type the
user chose, with gguf's reference quantisers, and its weight SQNR against our decoded weights is
measured; without a fallback type the export is refused, naming the tensors. Names follow
llama.cpp (token_embd, blk.N.attn_q, ...), and q/k rows are permuted the way llama.cpp's converter
does (transformers' GGUF loader undoes it on reading). Hyper-parameters come from the config.json
stored in the artifact, widths from the stored tensors (a folded model exports at its new widths
when every layer has the same ones: llama.cpp's LLaMA architecture builds every layer at layer 0's
sizes, so per-layer widths are refused); the tokenizer's metadata is copied from a GGUF file: the model's own source when it
came from one, or `tokenizer_from`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from big2small.compress import CompressedModel
from big2small.errors import Big2SmallError
from big2small.export.ggml_blocks import block_type_of, offset_exact, to_blocks
from big2small.evaluate.weights import WeightErrorRow
from big2small.export.records import ExportedTensor, requantisation_error
from big2small.generators import decode

ARCH = "llama"
# Types a tensor that has no exact counterpart can be re-quantised to (gguf.quants implements
# these; for K-quants, export f16 and run llama.cpp's quantize on it).
FALLBACK_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")
_FLOAT_TYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
# ggml's file-type numbers (general.file_type) of a file whose matrices are mostly one type.
_FILE_TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "BF16": 32}
_NAMES = [
    (r"model\.embed_tokens\.weight", "token_embd.weight"),
    (r"model\.norm\.weight", "output_norm.weight"),
    (r"lm_head\.weight", "output.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)", r"blk.\1.attn_q.\2"),
    (r"model\.layers\.(\d+)\.self_attn\.k_proj\.(weight|bias)", r"blk.\1.attn_k.\2"),
    (r"model\.layers\.(\d+)\.self_attn\.v_proj\.(weight|bias)", r"blk.\1.attn_v.\2"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.(weight|bias)", r"blk.\1.attn_output.\2"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.weight", r"blk.\1.ffn_gate.weight"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.weight", r"blk.\1.ffn_up.weight"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.weight", r"blk.\1.ffn_down.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"blk.\1.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"blk.\1.ffn_norm.weight"),
]


def gguf_name(name: str) -> str:
    """llama.cpp's name for a Hugging Face LLaMA tensor name."""
    for pattern, repl in _NAMES:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, repl, name)
    raise Big2SmallError(f"gguf: no llama.cpp name for tensor {name} (LLaMA-architecture models only)")


def permute_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order: within each head, the rotary halves interleaved (rows of a head
    h, i, j -> h, j, i for i in 0..1, j < head_dim / 2). Works on any [rows, ...] array (blocks too)."""
    shape = rows.shape
    return rows.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


@dataclass
class Hparams:
    """What llama.cpp's LLaMA loader reads, from config.json and the stored (maybe folded) shapes."""

    n_layer: int
    n_embd: int
    n_ff: list[int]  # per layer (llama.cpp's LLaMA graph needs them equal)
    n_head: list[int]
    n_head_kv: list[int]
    head_dim: int
    n_ctx: int
    n_vocab: int
    rms_eps: float
    rope_theta: float


def hparams(config: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> Hparams:
    """The LLaMA hyper-parameters of `config` (config.json) with the widths of `shapes`."""
    arch = (config.get("architectures") or [None])[0]
    if config.get("model_type") != "llama":
        raise Big2SmallError(f"gguf: only LLaMA-architecture models export to GGUF (this is {arch or config.get('model_type')})")
    rope = config.get("rope_parameters") or {"rope_theta": config.get("rope_theta", 10000.0),
                                             **(config.get("rope_scaling") or {"rope_type": "default"})}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise Big2SmallError(f"gguf: rope scaling {rope.get('rope_type', rope.get('type'))!r} is not exported (only the default rope)")
    n_layer, n_head = config["num_hidden_layers"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    layer = "model.layers.{}."
    hp = Hparams(
        n_layer=n_layer, n_embd=config["hidden_size"], head_dim=head_dim,
        n_ff=[shapes[layer.format(i) + "mlp.gate_proj.weight"][0] for i in range(n_layer)],
        n_head=[shapes[layer.format(i) + "self_attn.q_proj.weight"][0] // head_dim for i in range(n_layer)],
        n_head_kv=[shapes[layer.format(i) + "self_attn.k_proj.weight"][0] // head_dim for i in range(n_layer)],
        n_ctx=config.get("max_position_embeddings", 2048), n_vocab=config["vocab_size"],
        rms_eps=config.get("rms_norm_eps", 1e-6), rope_theta=float(rope.get("rope_theta", 10000.0)),
    )
    for what, values in (("MLP widths", hp.n_ff), ("attention head counts", hp.n_head), ("KV head counts", hp.n_head_kv)):
        if len(set(values)) > 1:
            raise Big2SmallError(
                f"gguf: this folded model's {what} differ per layer ({min(values)}..{max(values)}); llama.cpp's LLaMA "
                "architecture builds every layer at layer 0's sizes, so it cannot run it: fold with one ratio for "
                "every layer (allocation uniform) to export to GGUF")
    return hp


@dataclass
class _Planned:
    """One tensor's GGUF form, decided before anything is written."""

    name: str  # ours
    gguf: str
    type: str  # ggml type name
    exact: bool
    data: np.ndarray  # bytes (block types) or floats
    error: WeightErrorRow | None = None


def plan(cm: CompressedModel, fallback: str | None) -> list[_Planned]:
    """Every stored tensor's GGUF name, type and data; refuses (naming them) the tensors that have
    no exact GGUF form when no fallback type is given."""
    import gguf

    out, inexact = [], []
    for name, enc in cm.tensors.items():
        target = gguf_name(name)
        btype = block_type_of(enc)
        if btype is not None and (btype.symmetric or bool(offset_exact(enc).all())):
            out.append(_Planned(name, target, btype.name, True, to_blocks(enc, btype)))
        elif len(enc.layout.shape) == 1:  # norms: llama.cpp wants F32, which holds any of our floats
            out.append(_Planned(name, target, "F32", True, decode(enc).float().numpy()))
        elif not enc.compressed and enc.tensors["values"].dtype in _FLOAT_TYPES:
            values = enc.tensors["values"]
            out.append(_Planned(name, target, _FLOAT_TYPES[values.dtype], True, _float_array(values)))
        elif fallback is None:
            inexact.append(name)
        else:
            weights = decode(enc).float().numpy()
            qtype = gguf.GGMLQuantizationType[fallback.upper()]
            if fallback == "f32":
                data = weights
            elif fallback == "f16":
                data = weights.astype(np.float16)
            else:
                if weights.shape[-1] % 32:
                    raise Big2SmallError(f"gguf: {name} has rows of {weights.shape[-1]} weights, not whole blocks of 32 "
                                         f"for {fallback}; use --fallback-type f16")
                data = gguf.quants.quantize(weights, qtype)
            back = data.astype(np.float32) if fallback in ("f32", "f16") else gguf.quants.dequantize(data, qtype)
            out.append(_Planned(name, target, qtype.name, False, data,
                                requantisation_error(torch.from_numpy(weights), torch.from_numpy(np.ascontiguousarray(back)))))
    if inexact:
        shown = ", ".join(inexact[:3]) + (f" and {len(inexact) - 3} more" if len(inexact) > 3 else "")
        raise Big2SmallError(
            f"gguf: {len(inexact)} tensor(s) have no exact GGUF type ({shown}); only uniform group-32 codes "
            f"(symmetric 4/5/8 bits, asymmetric 4/5 bits with fp16-exact offsets) and float tensors do: "
            f"pass --fallback-type ({', '.join(FALLBACK_TYPES)}) to re-quantise them")
    return out


def _float_array(t: torch.Tensor) -> np.ndarray:
    """A float tensor as numpy, bf16 as its raw uint16 bits (what GGUFWriter takes with BF16)."""
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def write(cm: CompressedModel, path: Path, *, fallback: str | None, tokenizer_gguf: Path | None,
          name: str) -> list[ExportedTensor]:
    """Write `cm` as a GGUF file at `path` (a fresh temporary path: the caller publishes it)."""
    import gguf

    if cm.source is None or cm.source.files_dir is None or not (cm.source.files_dir / "config.json").is_file():
        raise Big2SmallError("gguf: the artifact has no source config.json (needed for llama.cpp's hyper-parameters)")
    config = json.loads((cm.source.files_dir / "config.json").read_text())
    shapes = {n: tuple(e.layout.shape) for n, e in cm.tensors.items()}
    hp = hparams(config, shapes)
    if tokenizer_gguf is None:
        raise Big2SmallError("gguf: this model did not come from a GGUF file, and big2small does not convert Hugging "
                             "Face tokenizers: pass --tokenizer-from FILE.gguf (a GGUF with the same tokenizer)")
    tensors = plan(cm, fallback)
    for p in tensors:
        if ".attn_q." in p.gguf or ".attn_k." in p.gguf:
            layer = int(p.gguf.split(".")[1])
            heads = hp.n_head[layer] if ".attn_q." in p.gguf else hp.n_head_kv[layer]
            p.data = permute_rows(p.data, heads)

    writer = gguf.GGUFWriter(str(path), ARCH)
    writer.add_name(name)
    writer.add_block_count(hp.n_layer)
    writer.add_context_length(hp.n_ctx)
    writer.add_embedding_length(hp.n_embd)
    writer.add_feed_forward_length(hp.n_ff[0])
    writer.add_head_count(hp.n_head[0])
    writer.add_head_count_kv(hp.n_head_kv[0])
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_vocab_size(hp.n_vocab)
    writer.add_rope_dimension_count(hp.head_dim)
    if hp.head_dim * hp.n_head[0] != hp.n_embd:
        writer.add_key_length(hp.head_dim)
        writer.add_value_length(hp.head_dim)
    matrices = Counter(p.type for p in tensors if p.data.ndim == 2)
    writer.add_file_type(_FILE_TYPES.get(matrices.most_common(1)[0][0], 0) if matrices else 0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _copy_tokenizer(writer, tokenizer_gguf)
    for p in tensors:
        qtype = gguf.GGMLQuantizationType[p.type]
        writer.add_tensor(p.gguf, p.data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return [ExportedTensor(p.name, p.gguf, p.type, p.exact, p.error) for p in tensors]


def _copy_tokenizer(writer: Any, path: Path) -> None:
    """Copy every tokenizer.* key of the GGUF file at `path` into `writer`."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise Big2SmallError(f"gguf: cannot read the tokenizer from {path} ({str(exc).splitlines()[0]})") from None
    copied = 0
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
            copied += 1
    if not copied:
        raise Big2SmallError(f"gguf: {path} holds no tokenizer metadata")
