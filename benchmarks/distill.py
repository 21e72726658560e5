"""Data-free distillation benchmark: repair of folded transformers (docs/distillation.md).

For each model and target (fraction of all parameters removed) the model is folded once (the
data-free fold that the fold benchmark found best for it: MiniLM fold-lsq, SmolLM2 fold-naive;
benchmarks/results/fold/fold.md), then measured:
- without distillation;
- distilled on synthetic inputs (big2small.distill.synthetic; data-free): SmolLM2 on text it
  samples itself, MiniLM on text SmolLM2 samples (re-tokenised) and, to compare routes, on random
  tokens;
- distilled on real text, as the upper bound of what the inputs could give (NOT data-free): 128-token
  windows of the second half of the Wikipedia extract, disjoint from the perplexity windows (its
  first 20 x 512 tokens) and from MiniLM's evaluation documents (lee_background).
Every distillation run has the same budget (steps, batch, sequence length, learning rate: in the
table and the JSON) and is seeded; metrics are the fold benchmark's (SmolLM2 perplexity, 20
windows of 512 tokens; MiniLM mean cosine to the original on 300 documents and Lee-50 Pearson).

Writes benchmarks/results/distill/{<model>.json, distill.md}; rows already in a model's JSON are
kept, so an interrupted run resumes. Wall times were measured on a 2-core CPU shared with other
work: they are upper bounds of what the machine alone would take.
Run: `nice python benchmarks/distill.py [--models minilm,smollm2] [--replot]`.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

import big2small as b2s
from big2small.distill import DistillConfig, distill, loss_for, synthetic_inputs
from big2small.evaluate import data
from big2small.evaluate.perplexity import start_token
from big2small.evaluate.suite import EvalSettings
from big2small.folding import FoldConfig, fold
from big2small.models.tasks import evaluate, get_task, reference_outputs

OUT = Path(__file__).resolve().parent / "results" / "distill"
METRIC = {"causal-lm": "perplexity", "encoder": "mean_cosine"}
# Budgets sized for a 2-core CPU shared with three other sessions (load 9-12): one thread (faster
# than two under that contention), 64-token sequences, a step and a time budget per run, and a
# smaller evaluation protocol than the fold benchmark's (fewer perplexity windows / documents; the
# original and the folded rows are re-measured under it, so every row of a table is comparable).
PLANS = {
    "minilm": {"sparsities": [0.2, 0.3], "fold": {"norm_repair": "lsq", "repair": "naive", "n_init": 3},
               "sources": ["smollm2", "random", "real"], "only_at": {"random": [0.2], "real": [0.2]},
               "eval": {"documents": 100},
               "distill": {"steps": 150, "samples": 136, "held_out": 8, "batch_size": 8, "seq_len": 64, "lr": 1e-4,
                           "max_seconds": 360.0}},
    "smollm2": {"sparsities": [0.1, 0.2, 0.3], "fold": {"repair": "naive", "n_init": 3},
                "sources": ["self", "real"], "only_at": {"real": [0.2]},
                "eval": {"windows": 5},
                "distill": {"steps": 60, "samples": 72, "held_out": 8, "batch_size": 4, "seq_len": 64, "lr": 5e-5,
                            "max_seconds": 480.0}},
}


def real_inputs(task: str, tokenizer, model, config: DistillConfig) -> dict[str, torch.Tensor]:
    """`config.samples` windows of real text (the second half of the Wikipedia extract), shaped
    like the synthetic inputs: start token + seq_len - 1 tokens for a causal LM, [CLS] text [SEP]
    padded to seq_len for an encoder."""
    text = data.wiki_text()
    text = text[len(text) // 2:]
    if task == "causal-lm":
        ids = tokenizer(text[: 40 * config.samples * config.seq_len], return_tensors="pt")["input_ids"][0]
        body = config.seq_len - 1
        if len(ids) < config.samples * body:
            raise SystemExit("not enough real text for the requested samples")
        start, _ = start_token(tokenizer, model.config)
        windows = ids[: config.samples * body].reshape(config.samples, body)
        ids = torch.cat([torch.full((config.samples, 1), start), windows], 1)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    words = text.split()
    chunk = 90  # words per window: about 128 word pieces
    texts = [" ".join(words[i * chunk:(i + 1) * chunk]) for i in range(config.samples)]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=config.seq_len, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def run_model(name: str) -> None:
    plan = PLANS[name]
    settings = EvalSettings(progress=False, **plan["eval"])
    path = OUT / f"{name}.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    done = {(r["method"], r["sparsity_target"]) for r in rows}
    loaded = b2s.load_model(name)
    teacher, task, tok = loaded.model, loaded.source.task, loaded.tokenizer
    reference = reference_outputs(teacher, task, tok, settings)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"

    def record(row: dict) -> None:
        rows.append(row)
        path.write_text(json.dumps({"model": name, "task": task, "plan": plan, "machine": machine, "rows": rows}, indent=1))
        print(f"{name} {row['method']} s={row['sparsity_target']}: {row['metrics']}", flush=True)

    def measure(model) -> dict:
        return {m.metric: m.value for m in evaluate(model, task, tok, reference=reference, settings=settings)}

    if ("original", 0.0) not in done:
        record({"method": "original", "sparsity_target": 0.0, "sparsity": 0.0, "metrics": measure(teacher)})
    for sparsity in plan["sparsities"]:
        # Some sources only at the targets listed in only_at (the rows are slow).
        sources = [s for s in plan["sources"] if sparsity in plan["only_at"].get(s, [sparsity])]
        methods = ["fold"] + [f"fold+distill-{s}" for s in sources]
        if all((m, sparsity) in done for m in methods):
            continue
        folded = fold(teacher, FoldConfig(sparsity=sparsity, seed=0, **plan["fold"]), progress=False)
        if ("fold", sparsity) not in done:
            record({"method": "fold", "sparsity_target": sparsity, "sparsity": folded.sparsity,
                    "fold_seconds": folded.seconds, "metrics": measure(folded.model), "data_free": True})
        for source in sources:
            method = f"fold+distill-{source}"
            if (method, sparsity) in done:
                continue
            config = DistillConfig(source="auto" if source == "real" else source, seed=0, **plan["distill"])
            start = time.perf_counter()
            inputs = real_inputs(task, tok, teacher, config) if source == "real" else \
                synthetic_inputs(teacher, task, tok, config, progress=True)
            input_seconds = time.perf_counter() - start
            student = copy.deepcopy(folded.model)
            report = distill(teacher, student, inputs, loss_for(task), config, progress=True)
            record({"method": method, "sparsity_target": sparsity, "sparsity": folded.sparsity,
                    "fold_seconds": folded.seconds, "input_seconds": input_seconds, "distill": report.to_dict(),
                    "metrics": measure(student), "data_free": source != "real"})
            del student


SOURCE_LABEL = {"self": "its own sampled text", "smollm2": "SmolLM2-sampled text", "random": "random tokens",
                "real": "real text (*data*)"}


def markdown(results: dict[str, dict]) -> str:
    lines = ["# Data-free distillation: repair of folded transformers", "",
             "Generated by `python benchmarks/distill.py`; every figure measured in that run (protocol: the script's",
             "docstring). Rows marked *data* train on real text: the upper bound, not data-free. Wall times on a",
             "2-core CPU shared with other work (upper bounds); input time is 0 when the inputs came from the cache.",
             "The held-out loss is measured on held-out inputs of the row's own source, so it compares before and",
             "after within a row, not across rows.", ""]
    for name, res in results.items():
        metric, rows = METRIC[res["task"]], res["rows"]
        extra = "lee50_pearson" if res["task"] == "encoder" else None
        original = next(r for r in rows if r["method"] == "original")
        budget = res["plan"]["distill"]
        lines += [f"## {name}", "", f"Machine: {res['machine']}. Original {metric} {original['metrics'][metric]:.4g}"
                  + (f", {extra} {original['metrics'][extra]:.4g}" if extra else "") + ". Fold: "
                  + ", ".join(f"{k}={v}" for k, v in res["plan"]["fold"].items()) + ". Distillation budget: "
                  + ", ".join(f"{k} {v}" for k, v in budget.items()) + " (AdamW). Evaluation: "
                  + ", ".join(f"{k} {v}" for k, v in res["plan"]["eval"].items()) + ".", ""]
        header = ["target", "params removed", "method", "inputs", metric] + ([extra] if extra else []) + \
                 (["x original"] if metric == "perplexity" else []) + \
                 ["held-out loss before -> after", "steps", "fold (s)", "inputs (s)", "distill (s)"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        order = ["fold"] + [f"fold+distill-{s}" for s in SOURCE_LABEL]  # no distillation, synthetic routes, real text
        for r in sorted(rows, key=lambda r: (r["sparsity_target"], order.index(r["method"]) if r["method"] in order else -1)):
            if r["method"] == "original":
                continue
            d = r.get("distill")
            source = r["method"].removeprefix("fold+distill-") if d else None
            cells = [f"{r['sparsity_target']:.0%}", f"{r['sparsity']:.1%}", "fold" if not d else "fold + distill",
                     SOURCE_LABEL[source] if d else "-", f"{r['metrics'][metric]:.4g}"]
            if extra:
                cells.append(f"{r['metrics'][extra]:.4g}")
            if metric == "perplexity":
                cells.append(f"{r['metrics'][metric] / original['metrics'][metric]:.2f}x")
            cells += [f"{d['held_out_before']:.4g} -> {d['held_out_after']:.4g}" if d else "-",
                      f"{d['steps']} ({d['stopped_by']})" if d else "-", f"{r['fold_seconds']:.0f}",
                      f"{r['input_seconds']:.0f}" if d else "-", f"{d['seconds']:.0f}" if d else "-"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PLANS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded 2-core CPU).")
    parser.add_argument("--replot", action="store_true", help="Only rebuild the table from the JSON files.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(",") if not args.replot else []:
        run_model(name)
    results = {name: json.loads((OUT / f"{name}.json").read_text()) for name in PLANS if (OUT / f"{name}.json").exists()}
    (OUT / "distill.md").write_text(markdown(results))
    print(f"wrote {OUT}/distill.md")


if __name__ == "__main__":
    main()
