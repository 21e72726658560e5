"""The Big2Small INR fitted on the teacher's outputs: distillation loss against weight loss, at equal size.

For each model one INR is fitted to the weights (weight MSE + frequency term, generators.inr; a
step budget, the same for every row), then, at exactly the same stored bits (checked per row):
- "INR, weight loss": as fitted;
- "INR + distillation": its SIRENs' parameters (and mean, spread, outlier values) trained on the
  teacher's outputs on synthetic inputs (data-free: BatchNorm inversion for the CNN, SmolLM2's text
  for MiniLM), `compress --distill`'s path (big2small.distill.qat);
- "INR + distillation + weight loss": the same, with weight_loss times the mean relative squared
  weight error added to the loss (does a mix help?);
and, for context, uniform RTN g128 at the two code widths around the INR's size. Distillation has
a step and a time budget (in the table and JSON); every wall time was measured on a 2-core CPU
shared with other sessions, at one thread: upper bounds of what the machine alone would take.

Writes benchmarks/results/distill/inr-<model>.json (rows kept: an interrupted run resumes),
inr.md and inr.png.
Run: `OMP_NUM_THREADS=1 nice python benchmarks/distill_inr.py [--models fashion-resnet-e1,minilm] [--replot]`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time

import torch

import big2small as b2s
from distill import OUT, Session, distilled_copy

# The INR's fit and distillation budgets, sized for a shared 2-core CPU at one thread.
# fashion-resnet-e1: the zoo's Fashion-MNIST ResNet (models.zoo.fashion) trained for 1 epoch instead
# of the zoo's 4, which would take about an hour on the shared CPU (the same code, `trained_resnet`).
PLANS = {
    "fashion-resnet-e1": {
        "inr": {"INR": {"bits_per_weight": 4.0, "steps": 300},
                "INR + 3-bit residual": {"bits_per_weight": 4.0, "steps": 300, "residual_bits": 3}},
        # The same INR fitted longer by weight loss, in about the wall time of fit + distillation:
        # does distillation beat spending its time on the weight fit?
        "fit_only": {"INR, 600 fit steps": {"bits_per_weight": 4.0, "steps": 600},
                     "INR + 3-bit residual, 600 fit steps": {"bits_per_weight": 4.0, "steps": 600, "residual_bits": 3}},
        "rtn_bits": [3, 4],
        "weight_losses": [1.0, 0.1],
        "eval": {},
        "distill": {"steps": 150, "samples": 72, "held_out": 8, "batch_size": 16, "lr": 1e-4,
                    "inversion_steps": 100, "max_seconds": 240.0},
        "source": "auto",
    },
    "minilm": {
        "inr": {"INR": {"bits_per_weight": 4.0, "steps": 100}},
        "rtn_bits": [3, 4],
        "weight_losses": [1.0],
        "eval": {"documents": 100},
        "distill": {"steps": 40, "samples": 136, "held_out": 8, "batch_size": 8, "seq_len": 64, "lr": 1e-4,
                    "max_seconds": 480.0},
        "source": "smollm2",
    },
}
METRIC = {"fashion-mnist-classifier": "top1_accuracy", "encoder": "mean_cosine"}


def _load(name: str) -> b2s.LoadedModel:
    if name != "fashion-resnet-e1":
        return b2s.load_model(name)
    from big2small.models.zoo.fashion import RESNET_FACTORY, trained_resnet

    model, _ = trained_resnet(epochs=1)
    return b2s.LoadedModel(model, b2s.ModelSource("module", name, "fashion-mnist-classifier", factory=RESNET_FACTORY,
                                                  module_class=type(model).__qualname__))


def measure(session: Session, cm) -> dict:
    """The session's metrics of the model `cm` decodes to."""
    return session.measure(cm.apply_to(copy.deepcopy(session.teacher)).eval())


def _size(cm) -> dict:
    size = cm.size()
    return {"bpw_all": size.bpw_all, "bpw_scope": size.bpw_scope, "bits": size.bits_total}


def run(name: str) -> None:
    plan = PLANS[name]
    session = Session(name, plan, f"inr-{name}.json", ("row", "weight_loss"), loaded=_load(name))
    loaded, record, done = session.loaded, session.record, session.done
    if ("original", "-") not in done:
        record({"row": "original", "weight_loss": "-", "metrics": session.measure(session.teacher)})
    for bits in plan["rtn_bits"]:
        if (f"uniform RTN {bits}-bit g128", "-") not in done:
            cm = b2s.compress(loaded, "uniform", bits=bits, group_size=128, progress=False)
            record({"row": f"uniform RTN {bits}-bit g128", "weight_loss": "-", "size": _size(cm),
                    "metrics": measure(session, cm)})
    for label, options in plan["inr"].items():
        run_inr(session, label, options)
    for label, options in plan.get("fit_only", {}).items():
        run_inr(session, label, options, distill=False)


def run_inr(session: Session, label: str, options: dict, distill: bool = True) -> None:
    """One INR config: as fitted (weight loss), then (`distill`) distilled with each weight loss of the plan."""
    plan, loaded, teacher, task, tok, record, done = (session.plan, session.loaded, session.teacher, session.task,
                                                      session.tok, session.record, session.done)
    fitted, distilled_row = f"{label}, weight loss", f"{label} + distillation"
    keys = [(fitted, "-")] + [(distilled_row, w) for w in ([0.0] + plan["weight_losses"] if distill else [])]
    if all(k in done for k in keys):
        return
    start = time.perf_counter()
    plain = b2s.compress(loaded, "inr", progress=True, **options)
    fit_seconds = time.perf_counter() - start
    size = _size(plain)
    if keys[0] not in done:
        record({"row": fitted, "weight_loss": "-", "inr": options, "size": size, "fit_seconds": fit_seconds,
                "metrics": measure(session, plain)})
    for weight_loss in [0.0] + plan["weight_losses"] if distill else []:
        if (distilled_row, weight_loss) in done:
            continue
        config, inputs, input_seconds = session.inputs(plan["source"])
        config = dataclasses.replace(config, weight_loss=weight_loss)
        distilled, report = distilled_copy(teacher, plain, task, tok, config, inputs, session.name)
        record({"row": distilled_row, "weight_loss": weight_loss, "inr": options, "size": _size(distilled),
                "fit_seconds": fit_seconds, "input_seconds": input_seconds, "distill": report.to_dict(),
                "metrics": measure(session, distilled), "data_free": True})


def markdown(results: dict[str, dict]) -> str:
    lines = ["# The Big2Small INR trained on the teacher's outputs (distillation) against its weight loss, at equal size",
             "",
             "Generated by `python benchmarks/distill_inr.py`; every figure measured in that run. `bpw`: every stored bit "
             "of the compressed tensors over their count (scope) and of the whole model over all parameters (all); the "
             "INR rows of a model have the same stored bits, checked. Wall times: a 2-core CPU shared with other "
             "sessions, one thread: upper bounds. `fit s` is each run's own fit (the same seeded fit, refitted when a run "
             "resumed: its spread is the machine's load); `inputs s` is 0 when the synthetic inputs came from the "
             "cache.", ""]
    for name, res in results.items():
        metric = METRIC[res["task"]]
        plan = res["plan"]
        d = plan["distill"]
        lines += [f"## {name} ({metric})", "",
                  f"INR fits: {json.dumps(plan['inr'])} (weight MSE + focal frequency term). Distillation: AdamW on the "
                  f"INR's parameters, at most {d['steps']} steps of {d['batch_size']} inputs or {d.get('max_seconds')} s, "
                  f"lr {d['lr']}, {d['samples']} synthetic inputs ({d['held_out']} held out), source "
                  f"{plan['source']}. Machine: {res['machine']}.", "",
                  f"| row | weight loss | bpw (scope) | bpw (all) | {metric} | held-out distill loss before -> after | "
                  "steps (stopped by) | fit s | inputs s | distill s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        # original first, then by size; each INR config's rows together (same stored bits)
        for r in sorted(res["rows"], key=lambda r: (r["size"]["bits"] if "size" in r else -1, r["row"], str(r["weight_loss"]))):
            size = r.get("size", {})
            dist = r.get("distill") or {}
            held = (f"{dist['held_out_before']:.4g} -> {dist['held_out_after']:.4g}"
                    if dist.get("held_out_before") is not None else "-")
            cells = [r["row"], str(r["weight_loss"]), f"{size['bpw_scope']:.3f}" if size else "32",
                     f"{size['bpw_all']:.3f}" if size else "32", f"{r['metrics'][metric]:.4f}", held,
                     f"{dist['steps']} ({dist['stopped_by']})" if dist else "-",
                     f"{r['fit_seconds']:.0f}" if "fit_seconds" in r else "-",
                     f"{r['input_seconds']:.0f}" if "input_seconds" in r else "-",
                     f"{dist['seconds']:.0f}" if dist else "-"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (name, res) in zip(axes[0], results.items()):
        metric = METRIC[res["task"]]
        for r in res["rows"]:
            if "size" not in r:
                ax.axhline(r["metrics"][metric], color="grey", ls="--", label="original")
                continue
            label = r["row"] + (f" (weight loss {r['weight_loss']})" if r["row"].endswith("distillation") else "")
            marker = "s" if r["row"].startswith("uniform") else "o"
            ax.scatter(r["size"]["bpw_scope"], r["metrics"][metric], marker=marker, label=label)
        ax.set_xlabel("bits per compressed weight (every stored bit)")
        ax.set_ylabel(metric)
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "inr.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="fashion-resnet-e1,minilm")
    parser.add_argument("--replot", action="store_true", help="Only rebuild the table and plot from the JSON files.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in args.models.split(",") if not args.replot else []:
        run(name)
    results = {name: json.loads((OUT / f"inr-{name}.json").read_text()) for name in PLANS
               if (OUT / f"inr-{name}.json").exists()}
    (OUT / "inr.md").write_text(markdown(results))
    plot(results)


if __name__ == "__main__":
    main()
