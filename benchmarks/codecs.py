"""Our codecs against every data-free baseline, side by side, on one model per run.

`python benchmarks/codecs.py [smollm2] [minilm] [efficientnet-lite0] [--only LABEL]... [--fresh]
[--ours "LABEL=METHOD:key=val,..."]...`

The same tensors are compressed in every row: those big2small compresses by default (Linear and
Conv weights of at least 4096 elements; conv weights in the matrix view [out, in * kh * kw]);
embeddings, norms and biases are kept in fp16 and counted in "bpw (all)" only (for SmolLM2 this
matches llama.cpp's token embedding kept at F16). Rows, near 2.25, 3.25 and 4.25 bits per
compressed weight:
- ours (the OURS list below, or --ours): `big2small.compress(loaded, method, **options)`; a method
  that is not registered (or an option it does not take) is skipped with a printed note;
- ours: allocated: bit allocation (`compress(loaded, None, bpw=T, target_over="compressed")`: each
  of these tensors gets trellis k=1..8 at L=10 by data-free output sensitivity) with T counted over
  exactly these tensors, at each target T; its encode seconds include the allocation;
- ours: allocated + distilled: the allocated rows at 3.25 and 4.25 (SmolLM2, MiniLM), then quantisation-aware
  distillation of the trellis scales, codes kept (and in the "norms too" rows the norm gains and biases
  stored raw), on the model's data-free synthetic inputs with benchmarks/distill.py --qat's budget: the
  same stored bits as the one-shot row. Measured by `distill.py --qat` beside the one-shot rows, under
  this protocol, and reused here (results/distill/qat-codecs-<model>.json); encode seconds include the
  allocation and the distillation;
- RTN: big2small's `uniform` (asymmetric; fp16 scale, integer zero-point per group), group 64 and 128;
- HQQ 0.2.8 (optimize=True, group 128, fp16 scale and zero), SINQ 0.2.0 (group 128; see external.py);
- llama.cpp: SmolLM2 (a llama architecture) through `llama_model_quantize` on its bundled GGUF,
  every file type in external.LLAMA_TYPES, with llama.cpp's own per-tensor mixes and fallbacks;
  the other models through ggml's quantiser on each tensor, the file type's base type everywhere.
Each row: bits per compressed weight (measured: the artifact's records, or the GGUF file's stored
tensor types), the task metric (SmolLM2 perplexity, MiniLM mean cosine vs fp32, EfficientNet-Lite0
top-1 agreement with fp32), weight SQNR over all compressed tensors, encode seconds.

Rows are cached in benchmarks/results/codecs/<model>.json, keyed by label: a re-run measures only
rows that are new or whose settings changed, plus those named by --only; --fresh re-measures all;
--skip-new measures only the rows named by --only (e.g. one new row of a model whose other new
rows would take hours).
Writes <model>.md, <model>.json and the Pareto plot <model>.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from big2small.bench import BenchRow, _environment, measure_decoded  # noqa: E402
from big2small.distill import DistillConfig  # noqa: E402
from big2small.errors import Big2SmallError  # noqa: E402
from big2small.evaluate.suite import EvalSettings  # noqa: E402
from big2small.models.tasks import evaluate, reference_outputs  # noqa: E402

OUT = ROOT / "results" / "codecs"
TARGETS = (2.25, 3.25, 4.25)  # bits per compressed weight

# Our methods: (label, method name or None, options for big2small.compress). Add a row with one line, e.g.
#   ("trellis k=4", "trellis", {"bits": 4}),   ("hyper+rot 8b g64", "hyper", {"bits": 8, "group_size": 64, "rotate": True}),
OURS: list[tuple[str, str, dict]] = [
    ("hyper 4b/pair g64", "hyper", {"bits": 4, "group_size": 64}),  # 2 bits/weight + fp16 scale/64 = 2.25
    ("hyper 6b/pair g64", "hyper", {"bits": 6, "group_size": 64}),  # 3.25
    ("hyper 8b/pair g64", "hyper", {"bits": 8, "group_size": 64}),  # 4.25
    ("hyper 6b/pair g128", "hyper", {"bits": 6}),  # 3.13 (group 128 is hyper's default)
    ("hyper 8b/pair g128", "hyper", {"bits": 8}),  # 4.13
    # The trellis codec (exactly k bits per weight, rotated, one fp16 scale per row): 2.03, 3.03, 4.03
    # on SmolLM2's 576-wide rows. Default register (12 bits); "L10" rows use the 4x faster 10-bit one.
    ("trellis 2b", "trellis", {"bits": 2}),
    ("trellis 3b", "trellis", {"bits": 3}),
    ("trellis 4b", "trellis", {"bits": 4}),
    # Bit allocation (no method: each tensor gets trellis k=1..8 at L=10, chosen by data-free output
    # sensitivity) with the target counted over exactly these tensors (target_over="compressed").
    *[(f"allocated {t}", None, {"bpw": t, "target_over": "compressed"}) for t in TARGETS],
]

# Bit allocation as above, then quantisation-aware distillation of the trellis scales (codes kept, stored
# bits unchanged) on the model's synthetic inputs with the budget of benchmarks/distill.py --qat, whose
# run measures these rows beside their one-shot rows under this protocol (results/distill/qat-codecs-*.json,
# reused here); a run here measures them itself, through compress(..., distill=DistillConfig(...)).
DISTILL_SOURCE = {"smollm2": "self", "minilm": "smollm2"}  # the data-free route of each model's --qat rows

PRIMARY = {"causal-lm": "perplexity", "encoder": "mean_cosine", "image-classifier": "top1_agreement"}


def baseline_rows(model_name: str) -> list[dict]:
    """The baseline rows for a model, {label, family, kind, params}, in the order they are measured.

    RTN at group 64 only: of 64 and 128 it lands nearest the target rates (2.28, 3.30, 4.31 against
    2.14, 3.16, 4.17; the group-128 figures are in results/hyper and results/<model>/bench.md)."""
    from external import BASE_TYPE, LLAMA_TYPES

    rows = [_row(f"RTN {b}b g64", "RTN (uniform)", "b2s", {"method": "uniform", "options": {"bits": b, "group_size": 64}})
            for b in (2, 3, 4)]
    if model_name == "smollm2":
        rows += [_row(f"llama.cpp {t}", "llama.cpp", "llama", {"ftype": t}) for t in LLAMA_TYPES[:-2]]  # not Q5_K_M, Q8_0
    else:
        rows += [_row(f"ggml {t}", "llama.cpp (ggml)", "ggml", {"type": t})
                 for t in list(dict.fromkeys(BASE_TYPE.values()))[:-2]]  # not Q5_K, Q8_0
    rows += [_row(f"HQQ {b}b g128", "HQQ", "hqq", {"bits": b, "group_size": 128}) for b in (4, 3, 2)]
    return rows


def sinq_rows() -> list[dict]:
    """Measured last: SINQ's Sinkhorn step is the slowest encoder here (minutes per model on this CPU)."""
    return [_row(f"SINQ {b}b g128", "SINQ", "sinq", {"bits": b, "group_size": 128}) for b in (4, 3, 2)]


def distilled_rows(model_name: str) -> list[dict]:
    """"allocated T + distilled" (the trellis scales trained) and "... + distilled, norms too" (and the
    raw norm gains and biases) for the models benchmarks/distill.py --qat distils (none for the others)."""
    from distill import QAT_PLANS, VECTORS, qat_distill_settings

    if model_name not in DISTILL_SOURCE:
        return []
    plan, source = QAT_PLANS[model_name], DISTILL_SOURCE[model_name]
    rows = []
    for label in plan["codecs_protocol"]:  # the "allocated T" rows --qat measures under this protocol
        options = {k: v for k, v in plan["codecs"][label].items() if k != "method"}
        variants = {"": source, **({", norms too": source + VECTORS} if label in plan["vectors_for"] else {})}
        rows += [_row(f"{label} + distilled{suffix}", "ours: allocated + distilled", "b2s",
                      {"method": None, "options": options, "distill": qat_distill_settings(model_name, s, label)})
                 for suffix, s in variants.items()]
    return rows


def ours_rows(model_name: str, extra: list[str]) -> list[dict]:
    from big2small.specs import parse_method_spec

    rows = [_row(label, "ours: " + (method or "allocated"), "b2s", {"method": method, "options": options})
            for label, method, options in OURS]
    rows += distilled_rows(model_name)
    for text in extra:  # "LABEL=METHOD:key=val,..."
        label, _, spec = text.partition("=")
        method, options = parse_method_spec(spec)
        rows.append(_row(label, "ours: " + method, "b2s", {"method": method, "options": options}))
    return rows


def _row(label: str, family: str, kind: str, params: dict) -> dict:
    return {"label": label, "family": family, "kind": kind, "params": params}


# --- measuring one row ---------------------------------------------------------------------------

class Context:
    """The model, its fp32 reference outputs, and the scaffold naming the compressed tensors."""

    def __init__(self, model_name: str):
        import big2small as b2s

        self.name = model_name
        self.loaded = b2s.load_model(model_name)
        self.settings = EvalSettings(progress=False)
        self.reference = reference_outputs(self.loaded.model, self.loaded.source.task, self.loaded.tokenizer, self.settings)
        # Any codec would do: only which tensors are compressed, and the raw ones' bits, are used.
        self.scaffold = b2s.compress(self.loaded, "uniform", bits=8, group_size=128, progress=False)
        self.names = [n for n, e in self.scaffold.tensors.items() if e.compressed]
        self.original = self.loaded.model.state_dict()


def fp32_entry(ctx: Context) -> dict:
    """The uncompressed model's row, with the protocols of its metrics."""
    metrics = evaluate(ctx.loaded.model, ctx.loaded.source.task, ctx.loaded.tokenizer, reference=ctx.reference,
                       settings=ctx.settings)
    row = BenchRow("fp32", "fp32", 32.0, 32.0, {m.metric: m.value for m in metrics}, None, None, "reference")
    return {"label": "fp32", "family": "fp32", "kind": "fp32", "params": {}, "result": asdict(row),
            "protocols": {m.metric: m.protocol for m in metrics}}


def measure(ctx: Context, row: dict) -> BenchRow | None:
    kind, p = row["kind"], row["params"]
    if kind == "b2s":
        return _measure_ours(ctx, row)
    if kind == "llama":
        return _measure_llama(ctx, row)
    from matrices import compress_matrices

    if kind == "hqq":
        from hqq_baseline import hqq_quantize_matrix
        quantise, note = (lambda w: hqq_quantize_matrix(w, p["bits"], p["group_size"])), "hqq 0.2.8, optimize=True, fp16 scale+zero"
    elif kind == "sinq":
        from external import sinq_matrix
        quantise, note = (lambda w: sinq_matrix(w, p["bits"], p["group_size"])), "sinq 0.2.0, fp16 s1+z per group, fp16 s2 per column"
    elif kind == "ggml":
        from external import ggml_matrix
        stored: dict[str, int] = {}

        def quantise(w):
            restored, bits, t = ggml_matrix(w, p["type"])
            stored[t] = stored.get(t, 0) + 1
            return restored, bits
        note = ""
    else:
        raise ValueError(f"unknown row kind {kind!r}")
    decoded, bits, seconds = compress_matrices(ctx.original, ctx.names, quantise)
    if kind == "ggml":
        note = "stored types: " + ", ".join(f"{t} x{n}" for t, n in sorted(stored.items(), key=lambda kv: -kv[1]))
    return _row_result(ctx, row, decoded, bits, seconds, note)


def _row_result(ctx: Context, row: dict, decoded, bits: int, seconds: float, note: str) -> BenchRow:
    bpw_all, bpw_scope, metrics, sqnr = measure_decoded(ctx.loaded, ctx.scaffold, decoded, bits, ctx.reference, ctx.settings)
    return BenchRow(row["family"], row["label"], bpw_all, bpw_scope, metrics, sqnr, seconds, note)


def _measure_ours(ctx: Context, row: dict) -> BenchRow | None:
    import big2small as b2s

    p = row["params"]
    try:
        t0 = time.perf_counter()
        distill = DistillConfig(**p["distill"]) if p.get("distill") else None
        cm = b2s.compress(ctx.loaded, p["method"], progress=distill is not None, distill=distill, **p["options"])
        seconds = time.perf_counter() - t0
    except (Big2SmallError, TypeError, ValueError) as exc:
        print(f"[codecs] skipping {row['label']!r}: {p['method']} {p['options']} -> {exc}", flush=True)
        return None
    if [n for n, e in cm.tensors.items() if e.compressed] != ctx.names:
        print(f"[codecs] note: {row['label']!r} compresses another set of tensors than the baselines", flush=True)
    size = cm.size()
    decoded = cm.state_dict(names=ctx.names)
    result = _row_result(ctx, row, decoded, size.bits_compressed, seconds, _mix(cm) if p["method"] is None else "")
    result.bpw_all = size.bpw_all  # the artifact's own count (the same raw tensors as the scaffold's)
    return result


def _mix(cm) -> str:
    """What allocation gave the compressed tensors: 'trellis 2 bits x30, trellis 3 bits x150, ...'."""
    from big2small.allocation.allocate import describe

    counts: dict[str, int] = {}
    for e in cm.plan:
        if e.compressed:
            counts[describe(e.config)] = counts.get(describe(e.config), 0) + 1
    return "allocated: " + ", ".join(f"{k} x{n}" for k, n in sorted(counts.items()))


def _llama_targets(ctx: Context) -> dict[str, str]:
    """HF name of each compressed tensor -> its GGUF name (blk.N.attn_q.weight, ...)."""
    hf = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
          "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
          "mlp.down_proj": "ffn_down"}
    out = {}
    for name in ctx.names:
        parts = name.split(".")  # model.layers.N.<module>.<proj>.weight
        out[name] = f"blk.{parts[2]}.{hf['.'.join(parts[3:5])]}.weight"
    return out


def _measure_llama(ctx: Context, row: dict) -> BenchRow:
    from external import gguf_state_dict, gguf_tensor_types, llama_quantize, smollm2_gguf

    from big2small.generators.base import HEADER_BITS

    src = smollm2_gguf()
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / f"smollm2-{row['params']['ftype']}.gguf"
        t0 = time.perf_counter()
        llama_quantize(src, dst, row["params"]["ftype"])
        seconds = time.perf_counter() - t0
        types = gguf_tensor_types(dst)
        targets = _llama_targets(ctx)
        state = gguf_state_dict(dst, ctx.loaded.model)
    decoded = {n: state[n].to(ctx.original[n].dtype) for n in ctx.names}
    bits = sum(8 * types[g][2] + HEADER_BITS for g in targets.values())
    counts: dict[str, int] = {}
    for g in targets.values():
        counts[types[g][0]] = counts.get(types[g][0], 0) + 1
    file_bits = sum(8 * nbytes for _, _, nbytes in types.values())
    embd = types.get("token_embd.weight", ("?",))[0]
    note = ("stored types: " + ", ".join(f"{t} x{n}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            + f"; token_embd {embd}; GGUF tensor data {file_bits / ctx.scaffold.size().n_parameters:.3f} bpw")
    return _row_result(ctx, row, decoded, bits, seconds, note)


# --- the run -------------------------------------------------------------------------------------

def run(model_name: str, extra_ours: list[str], only: list[str], fresh: bool, skip_new: bool = False) -> None:
    path = OUT / f"{model_name}.json"
    cache = json.loads(path.read_text()) if path.exists() and not fresh else {}
    cached = {e["label"]: e for e in cache.get("rows", [])}
    rows = ours_rows(model_name, extra_ours) + baseline_rows(model_name) + sinq_rows()
    ctx = Context(model_name)
    entries = [cached["fp32"] if "fp32" in cached and "fp32" not in only else fp32_entry(ctx)]
    if not fresh:  # an earlier benchmark's row with this run's settings replaces one cached with other settings
        for label, entry in earlier_rows(model_name, rows, entries[0]).items():
            if label not in cached or cached[label]["params"] != entry["params"]:
                cached[label] = entry
    for row in rows:
        old = cached.get(row["label"])
        if old and old["kind"] == row["kind"] and old["params"] == row["params"] and row["label"] not in only:
            entries.append(old)
            continue
        if skip_new and row["label"] not in only:
            continue  # not measured yet, and not asked for: left for a later run
        print(f"[codecs] {model_name}: measuring {row['label']}", flush=True)
        try:
            result = measure(ctx, row)
        except ImportError as exc:  # a benchmark-only package missing: the row stays unmeasured
            print(f"[codecs] skipping {row['label']!r}: {exc}", flush=True)
            result = None
        if result is not None:
            entries.append({**row, "result": asdict(result)})
            done = {e["label"] for e in entries}
            write(model_name, ctx.loaded.source.task, entries + [e for e in cached.values() if e["label"] not in done])
    # Rows no longer listed (an --ours row from an earlier run) are kept, after the listed ones.
    done = {e["label"] for e in entries}
    write(model_name, ctx.loaded.source.task, entries + [e for e in cached.values() if e["label"] not in done])


# Rows measured by other benchmarks, reused when their fp32 figures and protocols are this run's.
EARLIER = {"results/{model}/bench.json": "baselines.py", "results/hyper/{model}/bench.json": "hyper.py",
           "results/distill/qat-codecs-{model}.json": "distill.py --qat"}


def _spec(row: dict) -> str:
    """The row in the text form the earlier benchmarks' JSON use ("hqq:bits=3,group_size=128")."""
    from distill import codecs_spec

    p = row["params"]
    if row["kind"] == "b2s":
        return codecs_spec({"method": p["method"], **p["options"]}, p.get("distill"))
    return f"{row['kind']}:bits={p.get('bits')},group_size={p.get('group_size')}"


# Protocol entries that only describe (a label, a cache path): bos_token_id, which they describe, is compared.
DESCRIPTIVE = {"bos", "bos_source", "bos_token", "tokenizer"}


def _essential(protocols: dict) -> dict:
    return {m: {k: v for k, v in p.items() if k not in DESCRIPTIVE} for m, p in protocols.items()}


def earlier_rows(model_name: str, rows: list[dict], fp32: dict) -> dict[str, dict]:
    """Rows measured already by baselines.py or hyper.py, reused only where that run's fp32 figures and
    protocols are exactly this run's (same tensors, same evaluation): label -> cache entry."""
    found: dict[str, dict] = {}
    for pattern, script in EARLIER.items():
        path = ROOT / pattern.format(model=model_name)
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        ref = next(r for r in data["rows"] if r["method"] == "fp32")
        if ref["metrics"] != fp32["result"]["metrics"] or _essential(data["protocols"]) != _essential(fp32["protocols"]):
            print(f"[codecs] not reusing {path.relative_to(ROOT)}: its fp32 figures or protocols differ", flush=True)
            continue
        by_spec = {r["spec"]: r for r in data["rows"]}
        for row in rows:
            old = by_spec.get(_spec(row))
            if old is not None and row["label"] not in found:
                result = {**old, "method": row["family"], "spec": row["label"],
                          "note": (f"measured by benchmarks/{script} "
                                   f"(same tensors and protocol; {old['spec']}) " + old["note"]).strip()}
                found[row["label"]] = {**row, "result": result}
    return found


# --- the report ----------------------------------------------------------------------------------

WINDOW = (-0.35, 0.10)  # a row counts at target T if T - 0.35 <= bits per compressed weight <= T + 0.10


def write(model_name: str, task: str, entries: list[dict]) -> None:
    """<model>.json (every row, the cache), <model>.md (tables, protocol, command), <model>.png."""
    OUT.mkdir(parents=True, exist_ok=True)
    env = _environment()
    (OUT / f"{model_name}.json").write_text(json.dumps({"model": model_name, "task": task, "environment": env,
                                                         "rows": entries}, indent=2) + "\n")
    primary = PRIMARY[task]
    (OUT / f"{model_name}.md").write_text(markdown(model_name, entries, primary, env))
    plot(model_name, entries, primary, OUT / f"{model_name}.png")


def _fmt(x, nd=4) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if abs(x) >= 1e3 else f"{x:.{nd}f}"


def _better(primary: str, a: float, b: float) -> bool:
    return a < b if primary == "perplexity" else a > b


def summary(entries: list[dict], primary: str) -> list[str]:
    """Best row of each family near each target rate (at no more than T + 0.10 bits)."""
    families = list(dict.fromkeys(e["family"] for e in entries if e["family"] != "fp32"))
    head = ["family", *[f"~{t} bpw" for t in TARGETS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fam in families:
        cells = [fam]
        for t in TARGETS:
            best = None
            for e in entries:
                r = e["result"]
                if e["family"] == fam and r["bpw_scope"] is not None and t + WINDOW[0] <= r["bpw_scope"] <= t + WINDOW[1]:
                    if best is None or _better(primary, r["metrics"][primary], best["result"]["metrics"][primary]):
                        best = e
            cells.append("" if best is None else
                         f"{_fmt(best['result']['metrics'][primary])} ({best['result']['bpw_scope']:.2f}, {best['label']})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(model_name: str, entries: list[dict], primary: str, env: dict) -> str:
    fp32 = entries[0]
    metrics = list(fp32["result"]["metrics"])
    lines = [f"# {model_name}: codecs against every data-free baseline", "",
             f"fp32 reference: {primary} = {_fmt(fp32['result']['metrics'][primary])}. Best row of each family "
             f"within [T{WINDOW[0]}, T+{WINDOW[1]:.2f}] bits per compressed weight of each target T "
             "(value, then bits per compressed weight and row):", "", *summary(entries, primary), "",
             "Every row, by family and size:", ""]
    head = ["row", "family", "bpw (compressed)", "bpw (all)", *metrics, "weight SQNR dB", "encode s", "note"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = {f: i for i, f in enumerate(dict.fromkeys(e["family"] for e in entries))}
    for e in sorted(entries, key=lambda e: (order[e["family"]], e["result"]["bpw_scope"] or 0)):
        r = e["result"]
        cells = [e["label"], e["family"], _fmt(r["bpw_scope"], 3), _fmt(r["bpw_all"], 3),
                 *[_fmt(r["metrics"].get(m)) for m in metrics], _fmt(r["sqnr_db"], 2), _fmt(r["compress_seconds"], 1),
                 r["note"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Protocol:"]
    for name, proto in fp32.get("protocols", {}).items():
        lines.append(f"- {name}: " + ", ".join(f"{k}={v}" for k, v in proto.items()))
    lines += [
        "- the same tensors in every row: those big2small compresses by default (Linear/Conv weights of at least "
        "4096 elements; conv weights as [out, in*kh*kw]); everything else kept in fp16.",
        "- bpw (compressed): the stored bits of those tensors (codes, scales, zero-points, super-block scales "
        "and mins, column scales, a 128-bit header per tensor) over their element count; measured from our "
        "artifact's records, from the bytes ggml reports per row, or from the GGUF file's own stored tensor "
        "types. bpw (all): plus the fp16 tensors, over the original parameter count.",
        "- weight SQNR: over all compressed tensors together. encode s: wall-clock on this machine "
        "(llama.cpp: the whole-file quantisation, 2 threads). The machine's 2 cores are shared with other "
        "jobs (load 7 to 14 while this table's new rows ran; rows reused from baselines.py and hyper.py "
        "were timed on a quieter machine): compare encode times loosely.",
        "- data-free: no calibration data, no importance matrix; no fine-tuning, except the \"allocated + distilled\" "
        "rows, trained on the model's own synthetic inputs (SmolLM2: text it samples; MiniLM: text SmolLM2 samples).",
        f"- machine: {env.get('machine')}, {env.get('threads')} threads, torch {env.get('torch')}",
        f"- reproduce: `python benchmarks/codecs.py {model_name}` (cached rows are reused; `--only LABEL` re-measures one)",
    ]
    note = NOTES.get(model_name)
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


NOTES = {
    "smollm2": "llama.cpp rows: `llama_model_quantize` (no importance matrix, `allow_requantize`, token "
               "embedding/output at F16) on the bundled Q4_1 GGUF, whose weights are exactly what we load as fp32. "
               "SmolLM2's hidden size 576 is not a multiple of 256, so every tensor with 576-wide rows (all but "
               "ffn_down) falls back from the 256-wide K/IQ types to a 32-wide type (Q2_K, Q3_K -> Q4_0; IQ3_S, "
               "IQ4_XS -> IQ4_NL; Q4_K -> Q5_0; Q5_K -> Q5_1): the bits come from the file's stored types (see "
               "notes), which is why no llama.cpp type lands near 2.25 or 3.25 bits. Caveat: the weights sit on a "
               "4-bit group-32 asymmetric grid (Q4_1); no row here uses that configuration.",
    "minilm": "ggml rows: each tensor quantised by ggml's own `ggml_quantize_chunk` (no importance matrix) and "
              "dequantised by gguf-py; the file type's base type on every tensor (llama.cpp's _S/_M mixes are "
              "rules for its own architectures). Rows of 384 weights are not a multiple of 256, so llama.cpp's "
              "fallback applies to them (Q2_K, Q3_K -> Q4_0; IQ3_S, IQ4_XS -> IQ4_NL; Q4_K -> Q5_0; Q5_K -> Q5_1).",
    "efficientnet-lite0": "ggml rows: as for MiniLM; rows of conv weights that are not a multiple of 256 take "
                          "llama.cpp's 32-wide fallback, and rows not a multiple of 32 (depthwise 3x3/5x5, 1x1 "
                          "convs with 40, 80, 112, 144 or 240 inputs) are stored in F16, as llama.cpp does.",
}


def plot(model_name: str, entries: list[dict], primary: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fp32 = entries[0]["result"]["metrics"][primary]
    markers = "osD^v<>pPX*hH"
    fig, ax = plt.subplots(figsize=(8, 5))
    cap = 8 * fp32 if primary == "perplexity" else None
    families = list(dict.fromkeys(e["family"] for e in entries if e["family"] != "fp32"))
    for i, fam in enumerate(families):
        pts = sorted((e["result"]["bpw_scope"], e["result"]["metrics"][primary]) for e in entries if e["family"] == fam)
        ys = [min(y, cap) if cap else y for _, y in pts]
        line = ax.plot([x for x, _ in pts], ys, markers[i % len(markers)], ms=7, alpha=0.85, label=fam,
                       mfc=None if fam.startswith("ours") else "none")[0]
        for (x, y), shown in zip(pts, ys):
            if cap and y > cap:
                ax.annotate(f"{y:.3g}", (x, shown), textcoords="offset points", xytext=(0, -12 - 9 * i), ha="center",
                            fontsize=7, color=line.get_color())
    for t in TARGETS:
        ax.axvline(t, color="grey", lw=0.6, ls=":")
    ax.axhline(fp32, color="k", ls="--", lw=1, label="fp32")
    if cap:
        ax.set_yscale("log")
        ax.set_ylim(0.9 * fp32, cap * 1.1)
        ax.text(0.99, 0.98, f"capped at {cap:.0f} (true value below the marker)", transform=ax.transAxes, ha="right", va="top", fontsize=8)
    elif primary in ("mean_cosine", "top1_agreement"):
        lows = [e["result"]["metrics"][primary] for e in entries]
        ax.set_ylim(max(min(lows) - 0.02, 0.5 if primary == "mean_cosine" else 0.0), 1.005)
    ax.set_xlabel("bits per compressed weight (every stored bit)")
    ax.set_ylabel(primary)
    ax.set_title(f"{model_name}: {primary} vs size, data-free codecs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["smollm2", "minilm", "efficientnet-lite0"])
    parser.add_argument("--only", action="append", default=[], help="re-measure this row label (repeatable)")
    parser.add_argument("--ours", action="append", default=[], help='an extra row "LABEL=METHOD:key=val,..."')
    parser.add_argument("--fresh", action="store_true", help="ignore the cached rows")
    parser.add_argument("--skip-new", action="store_true",
                        help="measure no row that is not cached yet, except those named by --only")
    parser.add_argument("--report", action="store_true", help="only rewrite the table and plot from the JSON")
    args = parser.parse_args(argv)
    for model_name in args.models:
        if args.report:
            data = json.loads((OUT / f"{model_name}.json").read_text())
            write(model_name, data["task"], data["rows"])
        else:
            run(model_name, args.ours, args.only, args.fresh, args.skip_new)
        print((OUT / f"{model_name}.md").read_text())


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
