"""Model folding benchmark: folding vs structured magnitude pruning at the same parameter count.

For each model and each target sparsity (fraction of all parameters removed) it folds or prunes
the same coupling groups to the same widths, so every method at one sparsity has exactly the same
parameter count, and measures in this run:
- quality on the model's task (big2small.models.tasks): Fashion-MNIST ResNet test accuracy
  (10,000 images); EfficientNet-Lite0 top-1 agreement and KL against the original on 256 seeded
  photo crops; SmolLM2-135M perplexity (Wikipedia extract, 20 windows of 512 tokens, token 0
  prepended); all-MiniLM-L6-v2 embedding cosine against the original (300 documents) and Lee-50;
- parameters and MACs (Conv/Linear layers) before and after, and the wall time of folding.

Per-group widths come from the sparsity target by merge-cost allocation (folding/allocation.py),
the same widths for every method at one target; rows suffixed "-uniform" use one fold ratio for
every group instead (the published method's setting; docs/folding.md#widths), as an ablation.

Methods (labelled by the data they use):
- fold-ar: k-means merge with Fold-AR repair (data-free; BatchNorm models);
- fold-naive: merge, no repair (data-free);
- fold-rows: merge, merged MLP rows scaled by the AR factor (docs/folding.md#repair-without-batchnorm; data-free; no BatchNorm);
- fold-lsq / prune-l2-lsq: MLP output columns refit by least squares on synthetic inputs drawn
  through the preceding norm's weights (our design, folding/lsq_repair.py; data-free);
- prune-l1 / prune-l2: structured magnitude pruning of the same groups (data-free baseline);
- fold-data / prune-l1-data: BatchNorm statistics re-estimated on 256 real inputs (Fold-R; NOT
  data-free; photo crops with a different seed from the evaluation crops, or training images).

Writes benchmarks/results/fold/{<model>.json, fold.md, fold-<model>.png}; rows already in a
model's JSON are kept, so an interrupted run resumes.
Latency is measured in a separate pass, alone on the machine (`--speed`), for the original and the
folded widths at each target (the same widths serve every method of one allocation).
Run: `python benchmarks/fold.py [--models fashion-resnet,efficientnet-lite0,minilm,smollm2] [--replot]`,
then `python benchmarks/fold.py --speed`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import big2small as b2s
from big2small.evaluate.suite import EvalSettings
from big2small.folding import FoldConfig, fold
from big2small.models.tasks import evaluate, get_task, reference_outputs

OUT = Path(__file__).resolve().parent / "results" / "fold"

# What each model is measured at. n_init: k-means restarts (fewer for the wide groups of the big
# models, to keep the run within the session); seeds: k-means seeds of the folding rows.
CNN_METHODS = ["fold-ar", "fold-naive", "prune-l1", "prune-l2", "fold-data", "prune-l1-data"]
PLANS = {
    "fashion-resnet": {"sparsities": [0.1, 0.2, 0.3, 0.45, 0.6], "seeds": [0, 1, 2], "n_init": 10,
                       "methods": CNN_METHODS + [m + "-uniform" for m in CNN_METHODS]},
    "efficientnet-lite0": {"sparsities": [0.1, 0.2, 0.3, 0.45], "seeds": [0], "n_init": 3,
                           "methods": CNN_METHODS + ["fold-ar-uniform", "prune-l1-uniform"]},
    "minilm": {"sparsities": [0.1, 0.2, 0.3], "seeds": [0], "n_init": 3,
               "methods": ["fold-naive", "fold-rows", "fold-lsq", "prune-l1", "prune-l2", "prune-l2-lsq",
                           "fold-lsq-uniform"]},
    # Each SmolLM2 row takes 1-5 minutes on 2 cores: two low targets, and the repairs already compared
    # on MiniLM left out.
    "smollm2": {"sparsities": [0.05, 0.1], "seeds": [0], "n_init": 3,
                "methods": ["fold-naive", "fold-lsq", "prune-l2", "prune-l2-lsq"]},
}
METRIC = {"fashion-mnist-classifier": "top1_accuracy", "image-classifier": "top1_agreement",
          "causal-lm": "perplexity", "encoder": "mean_cosine"}


def method_config(method: str, sparsity: float, seed: int, n_init: int) -> FoldConfig:
    allocation = "uniform" if method.endswith("-uniform") else "cost"
    method = method.removesuffix("-uniform")
    selection = "fold" if method.startswith("fold") else method.split("-")[1]
    repair = {"fold-ar": "ar", "fold-data": "data", "prune-l1-data": "data"}.get(method, "naive")
    norm_repair = "scale_rows" if method == "fold-rows" else "lsq" if method.endswith("-lsq") else "none"
    return FoldConfig(sparsity=sparsity, selection=selection, repair=repair, seed=seed, n_init=n_init,
                      norm_repair=norm_repair, allocation=allocation)


def latency_ms(model: torch.nn.Module, inputs, repeats: int = 5) -> float:
    """Median wall time of one forward (ms), after a warm-up."""
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            start = time.perf_counter()
            model(**inputs) if isinstance(inputs, dict) else model(inputs)
            if i:
                times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def latency_input(task: str, model: torch.nn.Module):
    if task == "fashion-mnist-classifier":
        return torch.randn(256, 1, 28, 28)
    if task == "image-classifier":
        return torch.randn(8, 3, 224, 224)
    ids = get_task(task).example_input(model)["input_ids"]
    return {"input_ids": ids.repeat(8, 4) if task == "encoder" else ids.repeat(1, 4)}  # 8x512 or 1x512 tokens


def run_model(name: str, settings: EvalSettings) -> list[dict]:
    plan = PLANS[name]
    path = OUT / f"{name}.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    done = {(r["method"], r["sparsity_target"], r["seed"]) for r in rows}
    loaded = b2s.load_model(name)
    model, task, tok = loaded.model, loaded.source.task, loaded.tokenizer
    reference = reference_outputs(model, task, tok, settings)
    lat_in = latency_input(task, model)
    macs_in = get_task(task).example_input(model)

    def record(row: dict) -> None:
        rows.append(row)
        path.write_text(json.dumps({"model": name, "task": task, "plan": plan, "rows": rows,
                                    "machine": f"{platform.processor() or platform.machine()}, "
                                               f"{torch.get_num_threads()} threads, torch {torch.__version__}"},
                                   indent=1))
        print(f"{name} {row['method']} s={row['sparsity_target']} seed={row['seed']}: "
              f"{row['metrics']} params -{row['sparsity']:.1%} fold {row['fold_seconds']:.1f}s", flush=True)

    if ("original", 0.0, 0) not in done:
        metrics = {m.metric: m.value for m in evaluate(model, task, tok, reference=reference, settings=settings)}
        n = sum(p.numel() for p in model.parameters())
        from big2small.folding import count_macs
        record({"method": "original", "sparsity_target": 0.0, "seed": 0, "sparsity": 0.0, "parameters": n,
                "macs": count_macs(model, macs_in), "fold_seconds": 0.0, "latency_ms": latency_ms(model, lat_in),
                "metrics": metrics, "data_free": True})
    for sparsity in plan["sparsities"]:
        for method in plan["methods"]:
            seeds = plan["seeds"] if method.startswith("fold") else [0]
            for seed in seeds:
                if (method, sparsity, seed) in done:
                    continue
                config = method_config(method, sparsity, seed, plan["n_init"])
                data = get_task(task).calibration_batches() if config.repair == "data" else None
                try:
                    result = fold(model, config, data=data, example_input=macs_in, progress=False)
                except b2s.Big2SmallError as exc:
                    print(f"{name} {method} {sparsity}: {exc}")
                    continue
                metrics = {m.metric: m.value for m in evaluate(result.model, task, tok, reference=reference, settings=settings)}
                record({"method": method, "sparsity_target": sparsity, "seed": seed, "sparsity": result.sparsity,
                        "parameters": result.parameters_after, "macs": result.macs_after, "fold_seconds": result.seconds,
                        "latency_ms": latency_ms(result.model, lat_in), "metrics": metrics,
                        "data_free": result.data_free, "ratio": result.ratio})
    return rows


def measure_speed(name: str) -> None:
    """Latency of the original and of the folded widths (cost and uniform allocation) at each
    target, alone on the machine; stored under "speed" in the model's JSON."""
    from big2small.folding import count_macs

    path = OUT / f"{name}.json"
    res = json.loads(path.read_text())
    loaded = b2s.load_model(name)
    task = loaded.source.task
    lat_in = latency_input(task, loaded.model)
    macs_in = get_task(task).example_input(loaded.model)
    base_macs = count_macs(loaded.model, macs_in)
    rows = [{"label": "original", "sparsity": 0.0, "macs_removed": 0.0, "latency_ms": latency_ms(loaded.model, lat_in, 20)}]
    fold_method = next(m for m in PLANS[name]["methods"] if m.startswith("fold"))
    # The transformers' uniform widths are far worse (see their tables): only the CNNs time both.
    for allocation in ("", "-uniform") if task not in ("causal-lm", "encoder") else ("",):
        for sparsity in PLANS[name]["sparsities"]:
            config = method_config(fold_method + allocation, sparsity, 0, 1)
            if config.repair == "data":
                config.repair = "naive"
            result = fold(loaded.model, config, example_input=macs_in, progress=False)
            rows.append({"label": f"{sparsity:.0%} target, {'uniform r' if allocation else 'by merge cost'}",
                         "sparsity": result.sparsity, "macs_removed": 1 - result.macs_after / base_macs,
                         "latency_ms": latency_ms(result.model, lat_in, 20)})
            print(name, rows[-1], flush=True)
    shape = {k: list(v.shape) for k, v in lat_in.items()} if isinstance(lat_in, dict) else list(lat_in.shape)
    res["speed"] = {"input": f"input {shape}, {torch.get_num_threads()} threads", "rows": rows}
    path.write_text(json.dumps(res, indent=1))


def _summary(rows: list[dict], metric: str) -> dict[tuple[str, float], tuple[float, float, dict]]:
    """(method, target) -> (mean, std over seeds, first row)."""
    out = {}
    for key in {(r["method"], r["sparsity_target"]) for r in rows}:
        values = [r["metrics"][metric] for r in rows if (r["method"], r["sparsity_target"]) == key]
        first = next(r for r in rows if (r["method"], r["sparsity_target"]) == key)
        out[key] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, first)
    return out


def markdown(results: dict[str, dict]) -> str:
    lines = ["# Model folding vs structured pruning (same parameter count per sparsity)", "",
             "Generated by `python benchmarks/fold.py`; every figure measured in that run. Methods, data and",
             "protocols: see the script's docstring and benchmarks/README.md. `±` is the standard deviation",
             "over k-means seeds (3 for the ResNet's folding rows). Rows marked *data* re-estimate BatchNorm",
             "statistics on 256 real inputs: they are not data-free. On EfficientNet-Lite0 they are no upper bound:",
             "its crops come from six photos, and re-estimating the unfolded original's statistics on them, with no",
             "folding at all, already costs most of its agreement (benchmarks/results/distill/cnn.md).", ""]
    for name, res in results.items():
        task, rows = res["task"], res["rows"]
        metric = METRIC[task]
        extra = {"image-classifier": "kl", "encoder": "lee50_pearson"}.get(task)
        summary = _summary(rows, metric)
        original = summary[("original", 0.0)][2]
        lines += [f"## {name}", "", f"Machine: {res.get('machine', '?')}. Original: {original['parameters']:,} parameters, "
                  f"{original['macs']:,} MACs per example input, {metric} {original['metrics'][metric]:.4g}"
                  + (f", {extra} {original['metrics'][extra]:.4g}" if extra else "") + ".", ""]
        header = ["target", "method", "params removed", "MACs removed", metric] + ([extra] if extra else []) + \
                 ["fold time (s)"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for (method, target), (mean, std, first) in sorted(summary.items(), key=lambda kv: (kv[0][1], res["plan"]["methods"].index(kv[0][0]) if kv[0][0] in res["plan"]["methods"] else -1)):
            if method == "original":
                continue
            label = method + ("" if first["data_free"] else " (*data*)")
            value = f"{mean:.4g}" + (f" ± {std:.2g}" if std else "")
            cells = [f"{target:.0%}", label, f"{first['sparsity']:.1%}", f"{1 - first['macs'] / original['macs']:.1%}", value]
            if extra:
                cells.append(f"{statistics.mean(r['metrics'][extra] for r in rows if (r['method'], r['sparsity_target']) == (method, target)):.4g}")
            cells.append(f"{first['fold_seconds']:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        if res.get("speed"):
            lines += ["CPU latency of one forward (median of 20 after a warm-up, measured alone, "
                      f"{res['speed']['input']}): the original, and the folded widths at each target.", "",
                      "| widths | params removed | MACs removed | latency (ms) | speed-up |", "|---|---|---|---|---|"]
            base = res["speed"]["rows"][0]["latency_ms"]
            for r in res["speed"]["rows"]:
                lines.append(f"| {r['label']} | {r['sparsity']:.1%} | {r['macs_removed']:.1%} | {r['latency_ms']:.1f} | "
                             f"{base / r['latency_ms']:.2f}x |")
            lines.append("")
    return "\n".join(lines)


def plot(name: str, res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = METRIC[res["task"]]
    summary = _summary(res["rows"], metric)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in res["plan"]["methods"]:
        points = sorted((first["sparsity"], mean, std) for (m, _), (mean, std, first) in summary.items() if m == method)
        if method.endswith("-uniform") and method not in ("fold-ar-uniform", "prune-l1-uniform", "fold-lsq-uniform"):
            continue  # the table has every uniform row; the plot keeps the main ablation lines
        if points:
            xs, ys, es = zip(*points)
            style = ":" if method.endswith("-uniform") else "--" if "data" in method else "-"
            ax.errorbar([100 * x for x in xs], ys, yerr=es, fmt=style + "o", ms=4, capsize=2, label=method)
    original = summary[("original", 0.0)][0]
    ax.axhline(original, color="grey", lw=0.8, ls=":", label="original")
    ax.set_xlabel("parameters removed (%)")
    ax.set_ylabel(metric + (" (log)" if metric == "perplexity" else ""))
    if metric == "perplexity":
        ax.set_yscale("log")
    ax.set_title(f"{name}: folding vs structured pruning")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PLANS))
    parser.add_argument("--replot", action="store_true", help="Only rebuild the table and plots from the JSON files.")
    parser.add_argument("--speed", action="store_true", help="Only measure CPU latency (run it alone on the machine).")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    settings = EvalSettings(progress=False)
    for name in args.models.split(",") if not args.replot else []:
        measure_speed(name) if args.speed else run_model(name, settings)
    results = {}
    for name in PLANS:
        path = OUT / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
            plot(name, results[name], OUT / f"fold-{name}.png")
    (OUT / "fold.md").write_text(markdown(results))
    print(f"wrote {OUT}/fold.md")


if __name__ == "__main__":
    main()
