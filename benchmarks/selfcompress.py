"""Self-compression benchmark on Fashion-MNIST: the accuracy-vs-size trade-off curve.

Every row is measured in this run, on the 10,000 test images, by the network reloaded from its
artifact (so the size is the bytes that ship and the accuracy is what they compute):
- the fp32 reference: the recipe's CNN trained with the same schedule, no quantiser;
- self-compression at several gamma values (the built-in recipe, `big2small selfcompress`);
- uniform quantisation (RTN, asymmetric, per-channel and groups) of that fp32 network, at the
  self-compressed networks' sizes where it fits, and at 1-4 bits to draw its curve;
- the paper's headline (CIFAR-10, a different data set and network) as a reference line only.

Sizes are shares of the fp32 network's bits (its state_dict, BatchNorm statistics included): every
stored bit counted (packed integers, per-channel scales, minimums and widths, BatchNorm statistics
and biases in fp16). "Weights left" counts the weights of the quantised layers after channel
removal.

Writes benchmarks/results/selfcompress/{fashion.md, fashion.json, tradeoff-fashion.png}, or with
`--init fp32` (self-compression fine-tunes the fp32 reference, starting at 8 bits)
fashion-finetune.{md,json} and tradeoff-fashion-finetune.png.
Run: `python benchmarks/selfcompress.py [--epochs N] [--gammas 0.1,0.5,2.0] [--quantizer-lr X] [--init fp32]`.

`--datafree STEPS` (data-free self-compression, docs/self-compression.md#data-free-self-compression):
the fp32 network trained for --epochs on the real images is the teacher; for each gamma, the same
self-compression run (from the teacher at b0 = 8, STEPS Adam steps, the distillation loss against
the teacher's logits) on (a) the real training images and (b) synthetic images only (--samples
images inverted from the teacher's BatchNorm statistics, --inversion-steps each). Same loss, same
steps, same seed: only the images differ. `--lr` sets the weights' learning rate of both rows.
`--augment-shift S` (S >= 0; with `--augment-flip`):
both rows train on random variants of each batch (translated by up to S pixels, mirrored
left-right), with the teacher's logits recomputed on them (big2small.distill.augment). Writes
fashion-datafree.{md,json} and tradeoff-fashion-datafree.png (with `--tag T`:
fashion-datafree-T.* and tradeoff-fashion-datafree-T.png, a variant kept beside the main table).
Run: `python benchmarks/selfcompress.py --datafree 250 --epochs 2 --gammas 0.5,2.0 --samples 1024 --inversion-steps 150
--quantizer-lr 0.01 --lr 0.0001 --augment-shift 2 --augment-flip`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import big2small as b2s
from big2small.selfcompress.export import state_dict_bits
from big2small.evaluate.data import FashionSplits, fashion_mnist_splits
from big2small.distill import DistillConfig
from big2small.distill.augment import AugmentConfig
from big2small.selfcompress.quantizer import SelfCompressConfig
from big2small.distill.synthetic import making_seconds
from big2small.models.tasks import get_task
from big2small.selfcompress.sweep import TASK, SweepPoint, TrainingSet, run_recipe, synthetic_set, train_fp32, train_selfcompressed
from big2small.evaluate.classification import accuracy
from big2small.training import TrainConfig

OUT = Path(__file__).resolve().parent / "results" / "selfcompress"
PAPER = {"bits_share": 0.03, "weights_share": 0.18, "note": "paper, CIFAR-10: fp accuracy at 3% of the bits, 18% of the weights"}


def uniform_row(reference: torch.nn.Module, data: FashionSplits, *, bpw: float | None = None, **options) -> dict:
    """RTN of the fp32 reference, every weight in scope (min_numel 0), raw tensors fp16."""
    reference_bits = state_dict_bits(reference.state_dict())
    try:
        cm = b2s.compress(reference, "uniform", bpw=bpw, min_numel=0, progress=False, **options)
    except b2s.Big2SmallError as exc:
        return {"spec": _spec(bpw, options), "fits": False, "why": str(exc)}
    restored = cm.apply_to(type(reference)()).eval()
    configs = sorted({f"{e.config.bits}b g{e.config.group_size}" for e in cm.tensors.values() if e.method == "uniform"})
    return {
        "spec": _spec(bpw, options), "fits": True, "configs": configs,
        "test_accuracy": accuracy(restored, *data.test).top1,
        "bits_share": cm.size().bits_total / reference_bits,
        "weights_share": 1.0,
    }


def _spec(bpw, options) -> str:
    return f"uniform bpw={bpw:.3f}" if bpw is not None else "uniform " + ",".join(f"{k}={v}" for k, v in options.items())


def markdown(points: list[SweepPoint], uniform: list[dict], args, seconds: float) -> str:
    ref = points[0]
    lines = [
        "# Self-compression on Fashion-MNIST",
        "",
        f"Command: `python benchmarks/selfcompress.py --epochs {args.epochs} --gammas {args.gammas}"
        f" --quantizer-lr {args.quantizer_lr} --init {args.init}"
        + (f" --limit {args.limit}" if args.limit else "") + f"` ({seconds / 60:.0f} min on this machine's CPU).",
        "Network: `big2small.models.zoo.fashion.FashionCNN` (3 conv blocks with non-affine BatchNorm, "
        f"a linear classifier; {ref.stored_bits // 8 / 1024:.0f} KiB in fp32). Adam, lr 1e-3 (weights), batch 256; "
        "validation: the last 5,000 training images; accuracy on the 10,000 test images, measured on the "
        "network reloaded from its artifact.",
        "",
        "| network | test accuracy | vs fp32 | bits left (vs fp32) | weights left | stored | Q (nominal bits per weight) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in points:
        name = "fp32 reference" if p.gamma is None else f"self-compressed, gamma {p.gamma:g}"
        q = f"{p.history[-1].q_bits:.3f}" if p.gamma is not None else "32 (fp32)"
        lines.append(
            f"| {name} | {100 * p.test_accuracy:.2f}% | {100 * (p.test_accuracy - ref.test_accuracy):+.2f} pt | "
            f"{100 * p.bits_share:.2f}% | {100 * p.weights_share:.1f}% | {p.stored_bits / 8 / 1024:.1f} KiB | "
            f"{q} |"
        )
    lines += ["", "Uniform quantisation (RTN) of the fp32 reference:", "",
              "| setting | fits | test accuracy | vs fp32 | bits left (vs fp32) |", "|---|---|---|---|---|"]
    for u in uniform:
        if u["fits"]:
            lines.append(f"| {u['spec']} ({', '.join(u['configs'])}) | yes | {100 * u['test_accuracy']:.2f}% | "
                         f"{100 * (u['test_accuracy'] - ref.test_accuracy):+.2f} pt | {100 * u['bits_share']:.2f}% |")
        else:
            lines.append(f"| {u['spec']} | no: {u['why'].split(' (')[0]} | | | |")
    lines += ["", f"Reference: {PAPER['note']}.", ""]
    return "\n".join(lines)


def plot(points: list[SweepPoint], uniform: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    ref = points[0]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.axhline(100 * ref.test_accuracy, color="gray", ls="--", label=f"fp32 ({100 * ref.test_accuracy:.2f}%)")
    sc = [p for p in points if p.gamma is not None]
    ax.plot([100 * p.bits_share for p in sc], [100 * p.test_accuracy for p in sc], "o-", color="C0", label="self-compression")
    for p in sc:
        ax.annotate(f"γ={p.gamma:g}\n{100 * p.weights_share:.0f}% of weights", (100 * p.bits_share, 100 * p.test_accuracy),
                    fontsize=7, textcoords="offset points", xytext=(5, -16))
    series = {
        "uniform RTN per channel, 1-4 bits": [u for u in uniform if u["fits"] and "group_size=0" in u["spec"]],
        "uniform RTN g64, 2-3 bits": [u for u in uniform if u["fits"] and "group_size=64" in u["spec"]],
        "uniform RTN at the self-compressed sizes": [u for u in uniform if u["fits"] and "bpw=" in u["spec"]],
    }
    for (label, rows), style, color in zip(series.items(), ("s--", "^--", "D"), ("C1", "C2", "C4")):
        rows = sorted(rows, key=lambda u: u["bits_share"])
        ax.plot([100 * u["bits_share"] for u in rows], [100 * u["test_accuracy"] for u in rows], style, color=color, label=label)
    ax.axvline(100 * PAPER["bits_share"], color="C3", ls=":", label="paper: 3% of the bits (CIFAR-10)")
    ax.set_xscale("log")
    ticks = [0.5, 1, 2, 3, 5, 10, 20, 50, 100]
    xs = [100 * p.bits_share for p in sc] + [100 * u["bits_share"] for rows in series.values() for u in rows]
    ax.set_xticks(ticks)
    ax.set_xlim(min(xs + [100 * PAPER["bits_share"]]) / 1.3, max(xs) * 1.3)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("stored bits, share of the fp32 network (log scale)")
    ax.set_ylabel("test accuracy, %")
    shown = [100 * p.test_accuracy for p in points] + [100 * u["test_accuracy"] for rows in series.values() for u in rows]
    ax.set_ylim(max(0.0, min(shown) - 3), max(shown) + 2)
    ax.set_title("Fashion-MNIST CNN: test accuracy vs stored size")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def datafree_rows(args) -> dict:
    """The data-free comparison (module docstring); saved to its JSON (datafree_stem) after every row."""
    data_file = OUT / f"{datafree_stem(args)}.json"
    start = time.perf_counter()
    augment = augment_config(args)  # refused before any training
    data = fashion_mnist_splits()
    teacher, teacher_point = train_fp32(data, TrainConfig(epochs=args.epochs, seed=0))
    saved = {"command": " ".join(sys.argv), "args": vars(args), "teacher": teacher_point.to_dict(), "rows": []}
    distill = DistillConfig(samples=args.samples, held_out=args.held_out, seed=0, inversion_steps=args.inversion_steps)
    sets = {"synthetic": synthetic_set(teacher, distill, augment=augment),
            "real": TrainingSet.distilled(teacher, data.train[0], data.val[0], "real images, distillation loss",
                                          augment=augment)}
    saved["inputs_seconds"] = {k: v.seconds for k, v in sets.items()}
    # what inverting took when the images were made (this run, or an earlier one that cached them)
    saved["inversion_seconds"] = making_seconds(teacher, TASK, None, distill,
                                                example_input=get_task(TASK).example_input(teacher))
    schedule = TrainConfig(steps=args.datafree, lr=args.lr, quantizer_lr=args.quantizer_lr, seed=0)
    for gamma in [float(g) for g in args.gammas.split(",")]:
        for kind in ("real", "synthetic"):
            _, point = train_selfcompressed(sets[kind], data.test, TrainConfig(**{**schedule.__dict__, "gamma": gamma}),
                                            SelfCompressConfig(init_bits=8.0), init=teacher,
                                            out=OUT / "artifacts" / datafree_stem(args) / f"{kind}-gamma-{gamma:g}.b2s")
            saved["rows"].append({"images": kind, **point.to_dict()})
            saved["seconds"] = time.perf_counter() - start
            data_file.write_text(json.dumps(saved, indent=1))
    return saved


def datafree_stem(args) -> str:
    """fashion-datafree, or fashion-datafree-<tag> with --tag."""
    return "fashion-datafree" + (f"-{args.tag}" if args.tag else "")


def augment_config(args) -> AugmentConfig | None:
    """The augmentation both data-free rows train with (None: none); `args` as parsed or saved."""
    args = vars(args) if isinstance(args, argparse.Namespace) else args
    shift, flip = args.get("augment_shift"), bool(args.get("augment_flip"))
    if shift is None and not flip:
        return None
    config = AugmentConfig(flip=flip, max_shift=shift or 0)
    config.validate()
    return config


def datafree_markdown(saved: dict) -> str:
    args, teacher = saved["args"], SweepPoint.from_dict(saved["teacher"])
    augment = augment_config(args)
    lr = f" --lr {args['lr']:g}" if args.get("lr") not in (None, 1e-3) else ""
    lr += f" --tag {args['tag']}" if args.get("tag") else ""
    options = (f" --augment-shift {augment.max_shift}" + (" --augment-flip" if augment.flip else "")) if augment else ""
    augmented = (f" Both rows train on random variants of each batch (translated by up to {augment.max_shift} "
                 "pixels on each axis, edges replicated" + (", mirrored left-right with probability 1/2" if augment.flip
                                                           else "") +
                 "), the teacher's logits recomputed on each variant (`big2small.distill.augment`).") if augment else ""
    rows = [({k: v for k, v in r.items() if k != "images"}, r["images"]) for r in saved["rows"]]
    lines = [
        "# Data-free self-compression on Fashion-MNIST",
        "",
        f"Command: `python benchmarks/selfcompress.py --datafree {args['datafree']} --epochs {args['epochs']} "
        f"--gammas {args['gammas']} --samples {args['samples']} --inversion-steps {args['inversion_steps']} "
        f"--quantizer-lr {args['quantizer_lr']}{lr}{options}` ({saved['seconds'] / 60:.0f} min in all on this machine's CPU, one "
        "thread, shared with other jobs: times are upper bounds).",
        "",
        f"Teacher (the user's trained model): `FashionCNN` trained {args['epochs']} epochs on the 55,000 real "
        f"training images, {100 * teacher.test_accuracy:.2f}% test accuracy, {teacher.train_seconds:.0f} s. "
        f"Each self-compressing network starts from it at b0 = 8 and trains {args['datafree']} Adam steps "
        f"(batch 256, lr {args.get('lr') or 1e-3:g}, quantizer lr {args['quantizer_lr']}) with the distillation loss "
        "(KL(teacher || student) of the class distributions) plus gamma times the size loss; the two rows of a "
        "gamma differ only in the images: the 55,000 real training images (no labels used: the fair upper "
        f"bound of the same loss) or {args['samples'] - args['held_out']} synthetic images inverted from the "
        f"teacher's BatchNorm statistics ({args['inversion_steps']} Adam steps each; {args['held_out']} more held "
        f"out to validate).{augmented} Test accuracy: the 10,000 real test images, on the network reloaded from its "
        "artifact.",
        "",
        f"Making the inputs: synthetic images {saved['inputs_seconds']['synthetic']:.0f} s in this run (inversion, or "
        "reading them back from the on-disk cache, and teacher logits, once for every gamma)"
        + (f"; inverting the {args['samples']} images took {saved['inversion_seconds']:.0f} s in the run that made "
           "them" if saved.get("inversion_seconds") is not None else "")
        + f"; teacher logits on the real images {saved['inputs_seconds']['real']:.0f} s.",
        "",
        "| gamma | images | test accuracy | synthetic - real | bits left (vs fp32) | Q (bits per weight) | weights left | stored | training wall time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    real = {p["gamma"]: p for p, kind in rows if kind == "real"}
    for p, kind in rows:
        q = p["history"][-1]["q_bits"] if p["history"] else float("nan")
        kept = [h for h in p["history"] if h["kept"]]
        q = kept[0]["q_bits"] if kept else q
        gap = f"{100 * (p['test_accuracy'] - real[p['gamma']]['test_accuracy']):+.2f} pt" \
            if kind == "synthetic" and p["gamma"] in real else ""
        lines.append(f"| {p['gamma']:g} | {kind} | {100 * p['test_accuracy']:.2f}% | {gap} | {100 * p['bits_share']:.2f}% | "
                     f"{q:.3f} | {100 * p['weights_share']:.1f}% | {p['stored_bits'] / 8 / 1024:.1f} KiB | "
                     f"{p['train_seconds']:.0f} s |")
    lines.append("")
    return "\n".join(lines)


def datafree_plot(saved: dict, path: Path) -> None:
    """Test accuracy per gamma, real vs synthetic images side by side, each bar labelled with its
    share of the fp32 bits (the rows of a gamma end at nearly the same size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher = saved["teacher"]
    gammas = sorted({r["gamma"] for r in saved["rows"]})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axhline(100 * teacher["test_accuracy"], color="gray", ls="--", label=f"fp32 teacher ({100 * teacher['test_accuracy']:.2f}%)")
    width = 0.38
    for k, (kind, color) in enumerate((("real", "C0"), ("synthetic", "C1"))):
        rows = {r["gamma"]: r for r in saved["rows"] if r["images"] == kind}
        xs = [g_i + (k - 0.5) * width for g_i, g in enumerate(gammas) if g in rows]
        accs = [100 * rows[g]["test_accuracy"] for g in gammas if g in rows]
        bars = ax.bar(xs, accs, width, color=color, label=f"{kind} images (distillation loss)")
        for bar, g in zip(bars, [g for g in gammas if g in rows]):
            ax.annotate(f"{100 * rows[g]['test_accuracy']:.2f}%\n{100 * rows[g]['bits_share']:.1f}% of bits",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
    shown = [100 * r["test_accuracy"] for r in saved["rows"]] + [100 * teacher["test_accuracy"]]
    ax.set_ylim(min(shown) - 3, max(shown) + 1.5)
    ax.set_xticks(range(len(gammas)), [f"γ = {g:g}" for g in gammas])
    ax.set_ylabel("test accuracy, % (10,000 real test images)")
    ax.set_title("Fashion-MNIST self-compression: synthetic vs real images")
    ax.legend(fontsize=7, loc="lower center", framealpha=1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--gammas", default="0.1,0.5,2.0")
    parser.add_argument("--quantizer-lr", type=float, default=1e-2)
    parser.add_argument("--init", default="scratch", choices=("scratch", "fp32"))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--replot", action="store_true", help="Redraw the table and plot from fashion.json, no training.")
    parser.add_argument("--datafree", type=int, default=None, metavar="STEPS",
                        help="Data-free comparison: STEPS of self-compression on real vs synthetic images (--epochs: the teacher's).")
    parser.add_argument("--samples", type=int, default=1024, help="--datafree: synthetic images made (held out included).")
    parser.add_argument("--held-out", type=int, default=64, help="--datafree: synthetic images kept to validate.")
    parser.add_argument("--inversion-steps", type=int, default=150, help="--datafree: Adam steps of BatchNorm inversion.")
    parser.add_argument("--lr", type=float, default=1e-3, help="--datafree: Adam learning rate of the weights (both rows).")
    parser.add_argument("--tag", default="", help="--datafree: write fashion-datafree-TAG.* (a variant beside the main table).")
    parser.add_argument("--augment-shift", type=int, default=None, metavar="PIXELS",
                        help="--datafree: train both rows on batches translated by up to PIXELS (teacher logits recomputed).")
    parser.add_argument("--augment-flip", action="store_true",
                        help="--datafree: train both rows on batches mirrored left-right at random (teacher logits recomputed).")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.datafree is not None:
        try:
            augment_config(args)
        except b2s.Big2SmallError as exc:
            parser.error(str(exc))
        stem = datafree_stem(args)
        saved = json.loads((OUT / f"{stem}.json").read_text()) if args.replot else datafree_rows(args)
        (OUT / f"{stem}.md").write_text(datafree_markdown(saved))
        datafree_plot(saved, OUT / f"tradeoff-{stem}.png")
        print((OUT / f"{stem}.md").read_text())
        return
    # From scratch: fashion.*; fine-tuning the fp32 reference (--init fp32): fashion-finetune.*
    stem = "fashion" if args.init == "scratch" else "fashion-finetune"
    table, data_file, figure = OUT / f"{stem}.md", OUT / f"{stem}.json", OUT / f"tradeoff-{stem}.png"
    if args.replot:
        saved = json.loads(data_file.read_text())
        points = [SweepPoint.from_dict(p) for p in saved["points"]]
        # The run's own arguments (older outputs record only the command line).
        args = argparse.Namespace(**saved["args"]) if "args" in saved else parser.parse_args(saved["command"].split()[1:])
        table.write_text(markdown(points, saved["uniform"], args, saved["seconds"]))
        plot(points, saved["uniform"], figure)
        return
    start = time.perf_counter()
    config = TrainConfig(epochs=args.epochs, quantizer_lr=args.quantizer_lr)
    gammas = [float(g) for g in args.gammas.split(",")]
    points, reference = run_recipe(gammas, config, out_dir=OUT / "artifacts" / stem, init=args.init, limit=args.limit)
    data_file.write_text(json.dumps({"command": " ".join(sys.argv), "points": [p.to_dict() for p in points]}, indent=1))
    data = fashion_mnist_splits(limit=args.limit)
    uniform = [uniform_row(reference, data, bpw=32 * p.bits_share) for p in points[1:]]
    uniform += [uniform_row(reference, data, bits=b, group_size=0) for b in (1, 2, 3, 4)]
    uniform += [uniform_row(reference, data, bits=b, group_size=64) for b in (2, 3)]
    seconds = time.perf_counter() - start
    data_file.write_text(json.dumps({
        "command": " ".join(sys.argv), "args": vars(args), "seconds": seconds, "points": [p.to_dict() for p in points],
        "uniform": uniform, "paper": PAPER,
    }, indent=1))
    table.write_text(markdown(points, uniform, args, seconds))
    plot(points, uniform, figure)
    print(table.read_text())


if __name__ == "__main__":
    main()
