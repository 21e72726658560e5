"""Bit allocation against equal shares and against llama.cpp's rule-based mixes, at equal
whole-model size (every stored byte, embeddings included).

`python benchmarks/allocation.py [smollm2] [minilm] [efficientnet-lite0] [--only LABEL]... [--fresh]`

Sizes: llama.cpp's Q2_K, Q3_K_M, IQ4_XS and Q4_K_M files of SmolLM2, made from its bundled GGUF by
`llama_model_quantize` with llama.cpp's own per-tensor rules (embedding included, no importance
matrix); their size in bits per weight is the GGUF's tensor data (every tensor, norms included)
over the model's parameters. The other models use the same bits per weight (llama.cpp cannot
store them). Rows per model:
- `equal trellis 3b`: every tensor, embeddings included, at trellis k=3 (L=10): today's
  `--allocate equal`, which cannot fill a target between widths;
- `allocated @equal-3b` / `weights @equal-3b`: `--bpw` at that row's measured size, by output
  error (the default) and by weight error;
- `llama.cpp X` (SmolLM2 only): the file dequantised and evaluated with our protocol;
- `allocated @X`: `--bpw` (no method) at file X's size.
Each row: target and measured bits per weight (every stored bit over the parameters), the task
metric (perplexity on 8 windows of 512 tokens, mean cosine vs fp32 on 300 documents, top-1 agreement
vs fp32 on 256 photos) and seconds.
One more line per model: the seconds the allocation itself takes (curves and sensitivity).

Rows are cached in benchmarks/results/allocation/<model>.json, keyed by label; a re-run measures
only rows not there yet (or those named by --only; --fresh: all). Writes <model>.md as well.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import big2small as b2s  # noqa: E402
from big2small.bench import _environment  # noqa: E402
from big2small.compress import make_recipe, plan_with_count  # noqa: E402
from big2small.evaluate.suite import EvalSettings  # noqa: E402
from big2small.models.tasks import evaluate, reference_outputs  # noqa: E402

OUT = ROOT / "results" / "allocation"
LLAMA_FILES = ("Q2_K", "Q3_K_M", "IQ4_XS", "Q4_K_M")
PRIMARY = {"causal-lm": "perplexity", "encoder": "mean_cosine", "image-classifier": "top1_agreement"}


class Context:
    def __init__(self, model_name: str):
        self.name = model_name
        self.loaded = b2s.load_model(model_name)
        self.task = self.loaded.source.task
        # 8 perplexity windows of 512 tokens (the project's protocol takes 20): every row here is
        # measured under one protocol, side by side, and this session's CPU was shared.
        self.settings = EvalSettings(windows=8, progress=False)
        self.reference = reference_outputs(self.loaded.model, self.task, self.loaded.tokenizer, self.settings)

    def metric(self, model: torch.nn.Module) -> float:
        rows = evaluate(model.eval(), self.task, self.loaded.tokenizer, reference=self.reference, settings=self.settings)
        return {m.metric: m.value for m in rows}[PRIMARY[self.task]]


def llama_sizes(ctx: Context, cache: dict) -> dict[str, dict]:
    """Each llama.cpp file's size (bits per weight) and, for SmolLM2, its metric."""
    from external import gguf_state_dict, gguf_tensor_types, llama_quantize, smollm2_gguf

    sizes = {}
    for ftype in LLAMA_FILES:
        label = f"llama.cpp {ftype}"
        if label in cache:
            sizes[ftype] = cache[label]
            continue
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / f"smollm2-{ftype}.gguf"
            t0 = time.perf_counter()
            llama_quantize(smollm2_gguf(), dst, ftype, embeddings_f16=False)
            seconds = time.perf_counter() - t0
            types = gguf_tensor_types(dst)
            bits = sum(8 * nbytes for _, _, nbytes in types.values())
            weights = sum(count for _, count, _ in types.values())  # SmolLM2's parameters, whichever model runs
            row = {"label": label, "bpw_target": None, "bpw": bits / weights, "seconds": seconds,
                   "note": f"token_embd {types['token_embd.weight'][0]}; file tensor data {bits // 8} bytes"}
            if ctx.name == "smollm2":
                model = copy.deepcopy(ctx.loaded.model)
                state = gguf_state_dict(dst, model)
                model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=False)
                row["metric"] = ctx.metric(model)
        print(json.dumps(row), flush=True)
        sizes[ftype] = cache[label] = row
    return sizes


def ours(ctx: Context, label: str, bpw: float | None, **recipe) -> dict:
    method = recipe.pop("method", None)
    r = make_recipe(method, bpw=bpw, **recipe)
    t0 = time.perf_counter()
    cm = b2s.compress(ctx.loaded, r, progress=False)
    seconds = time.perf_counter() - t0
    model = cm.apply_to(copy.deepcopy(ctx.loaded.model))
    mix: dict[str, int] = {}
    for e in cm.plan:
        if e.compressed or e.budgeted:
            key = f"{e.config.method} {getattr(e.config, 'bits', '')}".strip() if e.compressed else "kept fp16"
            mix[key] = mix.get(key, 0) + 1
    row = {"label": label, "bpw_target": bpw, "bpw": cm.size().bpw_all, "metric": ctx.metric(model),
           "seconds": seconds, "note": ", ".join(f"{k} x{n}" for k, n in sorted(mix.items()))}
    print(json.dumps(row), flush=True)
    return row


def allocation_seconds(ctx: Context, bpw: float) -> float:
    """Seconds the allocation (error curves and sensitivity) takes, measured by planning alone."""
    t0 = time.perf_counter()
    plan_with_count(ctx.loaded, make_recipe(None, bpw=bpw))
    return time.perf_counter() - t0


def run(model_name: str, only: list[str], fresh: bool) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{model_name}.json"
    saved = json.loads(path.read_text()) if path.exists() and not fresh else {}
    cache = {r["label"]: r for r in saved.get("rows", [])}
    for label in only:
        cache.pop(label, None)
    ctx = Context(model_name)

    def save():
        doc = {"model": model_name, "task": ctx.task, "metric": PRIMARY[ctx.task], "rows": list(cache.values()),
               "fp32": saved.get("fp32"), "allocation_seconds": saved.get("allocation_seconds"),
               "environment": _environment()}
        path.write_text(json.dumps(doc, indent=1))
        (OUT / f"{model_name}.md").write_text(markdown(doc))
        saved.update(doc)

    if saved.get("fp32") is None:
        saved["fp32"] = ctx.metric(copy.deepcopy(ctx.loaded.model))
    sizes = llama_sizes(ctx, cache)
    save()
    steps = [("equal trellis 3b", lambda: ours(ctx, "equal trellis 3b", None, method="trellis", bits=3, state_bits=10,
                                               include_embeddings=True))]
    # In order of what each row tells: allocation against equal shares, then against llama.cpp.
    at_equal = {name: (lambda n=name, o=objective: ours(ctx, f"{n} @equal-3b", cache["equal trellis 3b"]["bpw"], allocate=o))
                for name, objective in (("allocated", "auto"), ("weights", "weights"))}
    at_llama = {f: (lambda f=f: ours(ctx, f"allocated @{f}", sizes[f]["bpw"])) for f in LLAMA_FILES}
    steps += [("allocated @equal-3b", at_equal["allocated"]), ("allocated @Q3_K_M", at_llama["Q3_K_M"])]
    steps += [(f"allocated @{f}", at_llama[f]) for f in ("Q2_K", "Q4_K_M", "IQ4_XS")]
    steps += [("weights @equal-3b", at_equal["weights"])]
    for label, measure in steps:
        if label not in cache:
            cache[label] = measure()
            save()
    if saved.get("allocation_seconds") is None:
        saved["allocation_seconds"] = allocation_seconds(ctx, cache["equal trellis 3b"]["bpw"])
        save()


def markdown(doc: dict) -> str:
    metric, env = doc["metric"], doc["environment"]
    lines = [f"# Bit allocation on {doc['model']} ({metric}; fp32: {doc['fp32']:.4f})", "",
             f"{env.get('machine', '')}, torch {env.get('torch', '')}; the machine was shared with other jobs, so "
             "seconds are upper bounds.", "",
             "| row | target bpw | bpw (all, measured) | within 1% under | " + metric + " | seconds | what each tensor got |",
             "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        target = r.get("bpw_target")
        within = "" if target is None else ("yes" if 0.99 * target <= r["bpw"] <= target else "no")
        value = r.get("metric")
        lines.append(f"| {r['label']} | {'' if target is None else f'{target:.4f}'} | {r['bpw']:.4f} | {within} | "
                     f"{'' if value is None else f'{value:.4f}'} | {r['seconds']:.0f} | {r.get('note', '')} |")
    rows = {r["label"]: r for r in doc["rows"]}
    lines.append("")
    if doc["model"] != "smollm2":
        lines.append("- The llama.cpp rows are SmolLM2's files, for their sizes only (bits per weight of SmolLM2's "
                     "own parameters): llama.cpp has no file of this model here, so they have no metric.")
    equal, allocated = rows.get("equal trellis 3b"), rows.get("allocated @equal-3b")
    if equal and allocated and metric == "perplexity":
        share = (equal["metric"] - allocated["metric"]) / (equal["metric"] - doc["fp32"])
        lines.append(f"- At {equal['bpw']:.3f} bpw, allocation closes {100 * share:.0f}% of the perplexity gap between "
                     f"equal shares and fp32 (target: 20%).")
    for ftype in LLAMA_FILES:
        ours_row, theirs = rows.get(f"allocated @{ftype}"), rows.get(f"llama.cpp {ftype}")
        if ours_row and theirs and theirs.get("metric") is not None:
            better = (ours_row["metric"] < theirs["metric"]) == (metric == "perplexity")
            lines.append(f"- At llama.cpp {ftype}'s size ({theirs['bpw']:.3f} bpw): ours {ours_row['metric']:.4f}, "
                         f"llama.cpp {theirs['metric']:.4f}: {'ours better' if better else 'llama.cpp better'}.")
    if doc.get("allocation_seconds") is not None:
        lines.append(f"- Allocation alone (error curves and sensitivity, planning without encoding) at the "
                     f"equal-3b size: {doc['allocation_seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", default=["smollm2"])
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    for name in args.models:
        run(name, args.only, args.fresh)


if __name__ == "__main__":
    main()
