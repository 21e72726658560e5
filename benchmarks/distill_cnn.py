"""Data-free repair of a folded CNN: EfficientNet-Lite0 folded, then repaired on synthetic images
inverted from its own BatchNorm statistics, against real photo crops (the *data* rows).

For each target (fraction of all parameters removed) the model is folded once with Fold-AR (the
fold benchmark's best data-free fold for it; benchmarks/results/fold/fold.md), then measured:
- fold-ar: as folded (data-free);
- + BN (synthetic): every BatchNorm's statistics re-estimated (big2small.training.recalibrate_batchnorm)
  on the training part of the synthetic images (BatchNorm inversion, big2small.distill.inversion;
  data-free; cached on disk by big2small.distill.synthetic);
- + distill (synthetic): the folded weights trained to reproduce the original's logits (KL) on the
  synthetic images (big2small.distill.loop, the `fold --distill` path; data-free);
- + BN (real), + distill (real): the same on real photo crops (NOT data-free, *data*): the same
  count and resolution, cropped with the calibration seed (disjoint crops from the evaluation's);
and, as controls, the unfolded original with its statistics re-estimated on each image set, and on
the fold benchmark's fold-data inputs (256 real crops at 224 x 224): how much re-estimation alone
costs, with no folding at all.

Quality: top-1 agreement and KL against the original on 256 seeded photo crops at 224 x 224 (the
fold benchmark's protocol). Synthesis and distillation run at a lower resolution (the plan's
image_size) to fit the CPU budget; the network is convolutional, so the weights apply unchanged at
224. Wall times were measured at one thread on a 2-core CPU shared with other sessions (load
10-15): upper bounds of what the machine alone would take.

Writes benchmarks/results/distill/cnn-<model>.json (rows kept: an interrupted run resumes), cnn.md and
cnn.png.
Run: `OMP_NUM_THREADS=1 nice python benchmarks/distill_cnn.py [--sparsities 0.3,0.2,0.1] [--variant NAME | --mismatch] [--replot]`; runs with
different --sparsities may share the rows file at once (once the first has made the synthetic images).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time

import torch

from big2small.distill import DistillConfig, distill, loss_for, synthetic_inputs
from big2small.distill.loop import IMAGES
from big2small.evaluate.data import photo_crops
from big2small.folding import FoldConfig, fold
from big2small.models.tasks import CALIBRATION_SEED, get_task
from big2small.training import recalibrate_batchnorm
from distill import OUT, Session

NAME = "efficientnet-lite0"
PLAN = {"sparsities": [0.3, 0.2, 0.1], "fold": {"repair": "ar", "n_init": 3}, "eval": {},
        # The inputs (synthetic and real alike): samples at image_size x image_size, the last
        # held_out kept aside to measure the distillation loss before and after.
        "distill": {"samples": 72, "held_out": 8, "image_size": 96, "inversion_steps": 80, "steps": 150,
                    "batch_size": 8, "lr": 1e-4, "max_seconds": 300.0},
        # Extra rows, each run alone (--variant NAME): distillation on the synthetic images with these
        # settings changed (the rows fold-ar+distill-synthetic/NAME).
        "variants": {"lr1e-5": {"lr": 1e-5}}}
SOURCES = {"synthetic": "synthetic (BN inversion)", "real": "real crops (*data*)"}
REPAIRS = ("bn", "distill")
FILE = f"cnn-{NAME}.json"


class SharedSession(Session):
    """A Session whose rows file several runs may fill at once (e.g. one per target): each record
    merges the rows the others wrote meanwhile, and `done` is read afresh before each row."""

    def _rows_on_disk(self) -> list[dict]:
        return json.loads(self.path.read_text())["rows"] if self.path.exists() else []

    def is_done(self, method: str, sparsity: float) -> bool:
        return any((r["method"], r["sparsity_target"]) == (method, sparsity) for r in self._rows_on_disk())

    def record(self, row: dict) -> None:
        self.rows = self._rows_on_disk()
        if not self.is_done(row["method"], row["sparsity_target"]):  # another run may have measured it meanwhile
            super().record(row)


def inputs(session: Session, config: DistillConfig, source: str) -> tuple[dict[str, torch.Tensor], float]:
    """The images of `source` and the seconds they took (0 when read from the cache)."""
    start = time.perf_counter()
    if source == "real":
        images = {IMAGES: photo_crops(config.samples, size=config.image_size, seed=CALIBRATION_SEED)}
    else:
        images = synthetic_inputs(session.teacher, session.task, session.tok, config, progress=True,
                                  example_input=get_task(session.task).example_input(session.teacher))
    return images, time.perf_counter() - start


def recalibrated(model: torch.nn.Module, images: torch.Tensor, config: DistillConfig) -> tuple[torch.nn.Module, float]:
    """A copy of `model` with its BatchNorm statistics re-estimated on the training images, and the seconds."""
    start = time.perf_counter()
    model = copy.deepcopy(model)
    recalibrate_batchnorm(model, images[:config.samples - config.held_out].split(config.batch_size * 4))
    return model.eval(), time.perf_counter() - start


def run(sparsities: list[float], variant: str | None = None) -> None:
    torch.manual_seed(0)
    session = SharedSession(NAME, PLAN, FILE, ("method", "sparsity_target"))
    teacher, record, measure, done = session.teacher, session.record, session.measure, session.is_done
    config = DistillConfig(source="auto", seed=0, **PLAN["distill"])
    if not done("original", 0.0):
        record({"method": "original", "sparsity_target": 0.0, "sparsity": 0.0, "metrics": measure(teacher),
                "data_free": True})
    images = {}
    for source in SOURCES:
        images[source], seconds = inputs(session, config, source)
        if not done(f"original+bn-{source}", 0.0):
            model, bn_seconds = recalibrated(teacher, images[source][IMAGES], config)
            record({"method": f"original+bn-{source}", "sparsity_target": 0.0, "sparsity": 0.0, "input_seconds": seconds,
                    "repair_seconds": bn_seconds, "metrics": measure(model), "data_free": source != "real"})
    if not done("original+bn-fold-data", 0.0):  # the fold benchmark's fold-data inputs: 256 crops at 224 x 224
        start = time.perf_counter()
        model = copy.deepcopy(teacher)
        recalibrate_batchnorm(model, get_task(session.task).calibration_batches())
        record({"method": "original+bn-fold-data", "sparsity_target": 0.0, "sparsity": 0.0,
                "repair_seconds": time.perf_counter() - start, "metrics": measure(model.eval()), "data_free": False})
    # (method, repair, source, config) of each row after the fold
    repairs = [(f"fold-ar+{r}-{s}", r, s, config) for s in SOURCES for r in REPAIRS] if variant is None else \
        [(f"fold-ar+distill-synthetic/{variant}", "distill", "synthetic",
          dataclasses.replace(config, **PLAN["variants"][variant]))]
    for sparsity in sparsities:
        methods = ["fold-ar"] + [m for m, *_ in repairs]
        if all(done(m, sparsity) for m in methods):
            continue
        folded = fold(teacher, FoldConfig(sparsity=sparsity, seed=0, **PLAN["fold"]), progress=True)
        base = {"sparsity_target": sparsity, "sparsity": folded.sparsity, "fold_seconds": folded.seconds}
        if not done("fold-ar", sparsity):
            record({"method": "fold-ar", **base, "metrics": measure(folded.model), "data_free": True})
        for method, repair, source, row_config in repairs:
            if done(method, sparsity):
                continue
            if repair == "bn":
                student, seconds = recalibrated(folded.model, images[source][IMAGES], row_config)
                extra = {"repair_seconds": seconds}
            else:
                student = copy.deepcopy(folded.model)
                report = distill(teacher, student, images[source], loss_for(session.task), row_config, progress=True)
                extra = {"repair_seconds": report.seconds, "distill": report.to_dict()}
            record({"method": method, **base, **extra, "metrics": measure(student), "data_free": source != "real"})
            del student


def mismatch() -> None:
    """How far each image set's BatchNorm statistics are from the original's running ones
    (big2small.distill.inversion.batchnorm_mismatch, on 64 images of each), stored in the JSON."""
    from big2small.distill.inversion import batchnorm_mismatch

    import big2small as b2s

    loaded = b2s.load_model(NAME)
    teacher, task = loaded.model, loaded.source.task
    config = DistillConfig(source="auto", seed=0, **PLAN["distill"])
    n, side = config.samples - config.held_out, config.image_size
    synthetic = synthetic_inputs(teacher, task, loaded.tokenizer, config, example_input=get_task(task).example_input(teacher))
    sets = {f"synthetic (BN inversion), {side} px": synthetic[IMAGES][:n],
            f"real crops, {side} px": photo_crops(n, size=side, seed=CALIBRATION_SEED),
            f"Gaussian noise, {side} px": torch.randn((n, 3, side, side), generator=torch.Generator().manual_seed(0)),
            "real crops, 224 px": photo_crops(n, size=224, seed=CALIBRATION_SEED)}
    found = {name: batchnorm_mismatch(teacher, x) for name, x in sets.items()}
    res = json.loads((OUT / FILE).read_text())  # other runs may be writing rows: read at the last moment
    res["bn_mismatch"] = found
    (OUT / FILE).write_text(json.dumps(res, indent=1))
    print(found)


LABELS = {"original": "original", "original+bn-fold-data": "original + BN re-estimated on the fold benchmark's "
          "fold-data inputs (256 real crops, 224 x 224) (*data*)", "fold-ar": "fold-ar"} | {
    f"{m}+{r}-{s}": f"{m} + {'BN re-estimated' if r == 'bn' else 'distilled'} on {SOURCES[s]}, {PLAN['distill']['image_size']} px"
    for m in ("original", "fold-ar") for r in REPAIRS for s in SOURCES} | {
    f"fold-ar+distill-synthetic/{v}": f"fold-ar + distilled on {SOURCES['synthetic']}, {PLAN['distill']['image_size']} px, "
    + ", ".join(f"{k} {x}" for k, x in settings.items()) for v, settings in PLAN["variants"].items()}


def markdown(res: dict) -> str:
    # One row per (method, target): concurrent runs of an earlier version could both measure one
    # (the same seeded computation); the first is kept.
    rows = list({(r["method"], r["sparsity_target"]): r for r in reversed(res["rows"])}.values())
    plan = res["plan"]
    order = list(LABELS)
    original = next(r for r in rows if r["method"] == "original")
    synthesis = next((r for r in rows if r["method"] == "original+bn-synthetic"), None)
    lines = ["# Data-free repair of a folded CNN: EfficientNet-Lite0", "",
             "Generated by `python benchmarks/distill_cnn.py`; every figure measured in that run (protocol: the",
             "script's docstring). Rows marked *data* use real photo crops: NOT data-free. Quality: top-1 agreement",
             "and KL (nats) against the original on 256 seeded photo crops at 224 x 224.", "",
             f"Machine: {res['machine']}. Fold: " + ", ".join(f"{k}={v}" for k, v in plan["fold"].items())
             + ". Inputs and distillation (AdamW, logit KL): " + ", ".join(f"{k} {v}" for k, v in plan["distill"].items())
             + ". Wall times are upper bounds (shared, loaded CPU)"
             + (f"; making the synthetic images took {synthesis['input_seconds']:.0f} s once (then cached)."
                if synthesis and synthesis["input_seconds"] > 1 else "."), "",
             "| target | params removed | method | data-free | top1_agreement | kl | held-out KL before -> after | "
             "steps | fold (s) | repair (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["sparsity_target"], order.index(r["method"]))):
        d = r.get("distill")
        lines.append("| " + " | ".join([
            f"{r['sparsity_target']:.0%}", f"{r['sparsity']:.1%}", LABELS[r["method"]], "yes" if r["data_free"] else "no",
            f"{r['metrics']['top1_agreement']:.4g}", f"{r['metrics']['kl']:.4g}",
            f"{d['held_out_before']:.4g} -> {d['held_out_after']:.4g}" if d else "-",
            f"{d['steps']} ({d['stopped_by']})" if d else "-",
            f"{r['fold_seconds']:.0f}" if "fold_seconds" in r else "-",
            f"{r['repair_seconds']:.0f}" if "repair_seconds" in r else "-"]) + " |")
    if res.get("bn_mismatch"):
        lines += ["", "Distance of each image set's BatchNorm statistics from the original's running statistics (sum over",
                  "BatchNorm layers of |batch mean - running mean|_2 + |batch var - running var|_2, 64 images; what",
                  "inversion minimises):", "", "| images | BN statistics mismatch |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in res["bn_mismatch"].items()]
    return "\n".join(lines + [""])


def plot(res: dict, path) -> None:
    """Top-1 agreement against parameters removed, one line per method (the controls at 0 %)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method in [m for m in LABELS if m.startswith("fold-ar")]:
        points = sorted((100 * r["sparsity"], r["metrics"]["top1_agreement"]) for r in res["rows"] if r["method"] == method)
        if points:
            ax.plot(*zip(*points), "--o" if "real" in method else "-o", ms=4,
                    label=LABELS[method].replace("(*data*)", "(data)"))
    ax.axhline(1.0, color="grey", lw=0.8, ls=":", label="original")
    ax.set_xlabel("parameters removed (%)")
    ax.set_ylabel("top-1 agreement with the original")
    ax.set_title(f"{res['model']}: folded, then repaired")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", default=",".join(map(str, PLAN["sparsities"])))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded 2-core CPU).")
    parser.add_argument("--replot", action="store_true", help="Only rebuild the table from the JSON file.")
    parser.add_argument("--variant", choices=sorted(PLAN["variants"]), help="Only the rows of this distillation variant.")
    parser.add_argument("--mismatch", action="store_true", help="Only measure each image set's BatchNorm mismatch.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.mismatch:
        mismatch()
    elif not args.replot:
        run([float(s) for s in args.sparsities.split(",")], args.variant)
    res = json.loads((OUT / FILE).read_text())
    (OUT / "cnn.md").write_text(markdown(res))
    plot(res, OUT / "cnn.png")
    print(f"wrote {OUT}/cnn.md")


if __name__ == "__main__":
    main()
