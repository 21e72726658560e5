"""Big2Small INR benchmark: quality at matched size against uniform RTN, low-rank and hyper-compression.

Fitting INRs is heavy (about 1e7 flops per weight), so the work is split in three stages:

  export  (here)       the tensors each INR variant will encode, and its per-tensor configs, sized
                       by --bpw to the whole-model bits of a uniform RTN g128 row at 3, 4 or 5 bits;
  fit     (a GPU box)  encode them (big2small's own INR generator, same code as on CPU);
  eval    (here)       assemble each variant's artifact (INR tensors from the fit, every other tensor
                       encoded here exactly as `compress` would), check its bits against the plan and
                       the bytes on disk, restore, evaluate; and measure the baselines in the same run.

    python benchmarks/inr.py export minilm [--shards 1]      # -> .inr_carry/
    python benchmarks/inr.py fit .inr_carry OUT --model minilm --device cuda [--variants a,b]
    python benchmarks/inr.py eval minilm --fits OUT [--fits OUT2 ...]
    python benchmarks/inr.py summary                          # the cross-model table and plot

Results: benchmarks/results/inr/<model>.{json,md,png} and benchmarks/results/inr/summary.md.
The tensors travel to the GPU in fp16 (the transfer limit), so the INRs are fitted to fp16-rounded
weights; every size and quality figure is then measured here against the original weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "results" / "inr"
CARRY = ROOT.parent / ".inr_carry"
RTN_GROUP = 128

# name -> (uniform RTN bits whose whole-model size the row is matched to, INR options)
VARIANTS: dict[str, tuple[int, dict]] = {
    "inr_at3": (3, {}),
    "inr_at4": (4, {}),
    "inr_at5": (5, {}),
    "inr_res2_at3": (3, {"residual_bits": 2}),
    "inr_res3_at4": (4, {"residual_bits": 3}),
    "inr_res4_at5": (5, {"residual_bits": 4}),
    "inr_nofreq_at4": (4, {"lambda_f": 0.0}),
    "inr_nooutliers_at4": (4, {"outlier_frac": 0.0}),
    "inr_noreorder_at4": (4, {"reorder": "none"}),
    "inr_greedy_at4": (4, {"reorder": "greedy"}),
}
DESCRIPTION = {
    "inr": "INR (outliers 0.1%, svd1 reordering, focal frequency loss 0.5)",
    "inr_res": "INR + uniform residual (residual bits given, INR takes the rest)",
    "inr_nofreq": "ablation: no frequency term (lambda_f = 0)",
    "inr_nooutliers": "ablation: no outlier split",
    "inr_noreorder": "ablation: no row/column reordering",
    "inr_greedy": "greedy nearest-neighbour reordering",
}
BASELINES = {
    "uniform RTN g128": "uniform:bits={b},group_size=128",
    "hyper (ours)": "hyper:bits={b2}",
}


def _family(variant: str) -> str:
    return re.sub(r"\d*_at\d+$", "", variant)


def _load(model_name: str):
    import big2small as b2s

    return b2s.load_model(model_name)


def _rtn_bpw(loaded, bits: int) -> float:
    import big2small as b2s
    from big2small.compress import _planned_bits, count_parameters, plan_model

    _, entries = plan_model(loaded.weights, b2s.make_recipe("uniform", bits=bits, group_size=RTN_GROUP))
    return sum(_planned_bits(e) for e in entries) / count_parameters(entries)


def _inr_recipe(loaded, variant: str, steps: int | None):
    import big2small as b2s

    bits, options = VARIANTS[variant]
    options = dict(options)
    if steps:
        options["steps"] = steps
    return b2s.make_recipe("inr", bpw=_rtn_bpw(loaded, bits), **options)


def export(model_name: str, variants: list[str], shards: int, steps: int | None) -> None:
    """Write the weights every variant encodes (fp16, split into `shards` files) and the jobs."""
    from safetensors.torch import save_file

    from big2small.compress import plan_model

    loaded = _load(model_name)
    CARRY.mkdir(exist_ok=True)
    jobs, names = {}, []
    for v in variants:
        _, entries = plan_model(loaded.weights, _inr_recipe(loaded, v, steps))
        jobs[v] = [{"name": e.name, "config": e.config.to_dict(), "shape": list(e.layout.shape),
                    "transposed": e.layout.transposed} for e in entries if e.config.method == "inr"]
        names += [j["name"] for j in jobs[v] if j["name"] not in names]
    weights = dict(loaded.weights.state_dict()) if hasattr(loaded.weights, "state_dict") else dict(loaded.weights)
    per_shard = -(-len(names) // shards)
    for k in range(shards):
        part = names[k * per_shard:(k + 1) * per_shard]
        tag = f"{model_name}-{k}" if shards > 1 else model_name
        save_file({n: weights[n].detach().to(torch.float16).contiguous() for n in part}, str(CARRY / f"{tag}.safetensors"))
        shard_jobs = {v: [j for j in js if j["name"] in part] for v, js in jobs.items()}
        (CARRY / f"{tag}.jobs.json").write_text(json.dumps(shard_jobs))
        print(f"{tag}: {len(part)} tensors, {sum(weights[n].numel() for n in part) / 1e6:.1f} M weights")


def fit(carry: Path, out: Path, model_name: str, variants: list[str] | None, device: str) -> None:
    """Encode the exported jobs with the INR generator on `device`; one safetensors per variant."""
    from safetensors.torch import load_file, save_file

    from big2small.generators import GeneratorConfig, INRGenerator
    from big2small.layout import MatrixLayout

    out.mkdir(parents=True, exist_ok=True)
    for jobs_file in sorted(carry.glob(f"{model_name}*.jobs.json")):
        tag = jobs_file.name[: -len(".jobs.json")]
        weights = load_file(str(carry / f"{tag}.safetensors"))
        jobs = json.loads(jobs_file.read_text())
        summary = {}
        for v in variants or list(jobs):
            items = [(GeneratorConfig.from_dict(j["config"]), weights[j["name"]].to(device).float(),
                      MatrixLayout(tuple(j["shape"]), j["transposed"])) for j in jobs[v]]
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            encs = INRGenerator.encode_many(items, seed=0)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            arrays = {f"{j['name']}::{k}": t for j, e in zip(jobs[v], encs) for k, t in e.tensors.items()}
            save_file(arrays, str(out / f"{tag}.{v}.safetensors"))
            summary[v] = {"seconds": seconds, "device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu",
                          "torch": torch.__version__, "n_weights": sum(l.numel for _, _, l in items),
                          "tensors": {j["name"]: {"meta": e.meta, "bits": e.bits} for j, e in zip(jobs[v], encs)}}
            err = sum(e.meta.get("inr_rel_error", 0) for e in encs) / max(len(encs), 1)
            print(f"{tag} {v}: {len(encs)} tensors in {seconds:.1f} s, mean INR rel error {err:.3f}", flush=True)
            (out / f"{tag}.fit.json").write_text(json.dumps(summary))  # after every variant: a cut-off run keeps them


def _fitted(model_name: str, variant: str, fit_dirs: list[Path]):
    """{tensor name: Encoded parts and record} of one variant, from every shard found."""
    from safetensors.torch import load_file

    tensors, records, seconds, device = {}, {}, 0.0, None
    for d in fit_dirs:
        for fj in d.glob(f"{model_name}*.fit.json"):
            tag = fj.name[: -len(".fit.json")]
            if not re.fullmatch(rf"{re.escape(model_name)}(-\d+)?", tag):
                continue
            summary = json.loads(fj.read_text())
            if variant not in summary:
                continue
            arrays = load_file(str(d / f"{tag}.{variant}.safetensors"))
            for key, t in arrays.items():
                name, part = key.split("::")
                tensors.setdefault(name, {})[part] = t
            records.update(summary[variant]["tensors"])
            seconds += summary[variant]["seconds"]
            device = summary[variant]["device"]
    return tensors, records, seconds, device


def _assemble(loaded, variant: str, fit_dirs: list[Path], steps: int | None):
    """The CompressedModel of a variant: fitted INR tensors (their bits checked against the plan by
    compress), everything else encoded here."""
    from big2small.compress import compress, plan_model
    from big2small.generators import Encoded

    recipe = _inr_recipe(loaded, variant, steps)
    infos, entries = plan_model(loaded.weights, recipe)
    by_name = {i.name: i.tensor for i in infos}
    fitted, records, seconds, device = _fitted(loaded.source.name, variant, fit_dirs)
    pre_encoded = {}
    for e in entries:
        if e.config.method == "inr":
            if e.name not in fitted:
                raise SystemExit(f"{variant}: no fit for {e.name}; run the fit stage first")
            rec = records[e.name]
            pre_encoded[e.name] = Encoded("inr", e.config, e.layout, by_name[e.name].dtype, fitted[e.name], rec["bits"],
                                          rec["meta"])
    cm = compress(loaded, recipe, progress=False, pre_encoded=pre_encoded, pre_encoded_reason="INR fitted on a GPU")
    return cm, seconds, device


def _disk_check(cm) -> int:
    """Save the artifact and reload it: bytes on disk of the tensor file, and the same decoded tensors."""
    import tempfile

    import big2small as b2s

    with tempfile.TemporaryDirectory() as tmp:
        info = b2s.save(cm, Path(tmp) / "a.b2s")
        back = b2s.load(Path(tmp) / "a.b2s")
        name = next(n for n, e in cm.tensors.items() if e.method == "inr")
        assert torch.equal(back.state_dict(names=[name])[name], cm.state_dict(names=[name])[name])
        return info.tensor_file_bytes


def evaluate_model(model_name: str, fit_dirs: list[Path], steps: int | None) -> None:
    from big2small.bench import BenchResult, BenchRow, _environment, _measure, plot_pareto
    from big2small.evaluate.suite import EvalSettings
    from big2small.models.tasks import evaluate, reference_outputs

    loaded = _load(model_name)
    task = loaded.source.task
    settings = EvalSettings()
    quiet = EvalSettings(progress=False)
    reference = reference_outputs(loaded.model, task, loaded.tokenizer, settings)
    base = evaluate(loaded.model, task, loaded.tokenizer, reference=reference, settings=settings)
    rows = [BenchRow("fp32", "original", 32.0, 32.0, {m.metric: m.value for m in base}, None, None, "reference")]
    fitted = [v for v in VARIANTS if any(any(d.glob(f"{model_name}*.{v}.safetensors")) for d in fit_dirs)]
    sizes = sorted({VARIANTS[v][0] for v in fitted})  # baselines where there is an INR to compare with
    for b in sizes:
        for label, spec in BASELINES.items():
            row, _ = _measure(loaded, spec.format(b=b, b2=2 * b), quiet, reference)
            row.method = label
            rows.append(row)
            print(f"{label} @{b}: {row.metrics}", flush=True)
        row, _ = _measure(loaded, f"lowrank:bpw={_rtn_bpw(loaded, b):.6f}", quiet, reference)
        row.method = "low-rank"
        rows.append(row)
    for v in fitted:
        cm, seconds, device = _assemble(loaded, v, fit_dirs, steps)
        size = cm.size()
        disk = _disk_check(cm)
        model = cm.apply_to(copy.deepcopy(loaded.model)).eval()
        err = cm.weight_error(loaded.model.state_dict(), decoded=dict(model.state_dict()))  # decode once
        metrics = evaluate(model, task, loaded.tokenizer, reference=reference, settings=quiet)
        widths = sorted({e.meta.get("width") for e in cm.tensors.values() if e.method == "inr" and not e.meta.get("dense")})
        inr_err = [e.meta["inr_rel_error"] for e in cm.tensors.values() if e.method == "inr" and "inr_rel_error" in e.meta]
        note = (f"h={'/'.join(map(str, widths))}; INR part rel. error {sum(inr_err) / max(len(inr_err), 1):.3f}; "
                f"tensor file {disk / 1e6:.2f} MB = {8 * disk / cm.n_parameters:.3f} bits/param; fitted on {device}")
        rows.append(BenchRow(v, json.dumps(VARIANTS[v][1]) if VARIANTS[v][1] else "defaults", size.bpw_all, size.bpw_scope,
                             {m.metric: m.value for m in metrics}, err.total.sqnr_db if err else None, seconds, note))
        print(f"{v}: bpw {size.bpw_scope:.3f} {rows[-1].metrics} ({note})", flush=True)
        del model
    result = BenchResult(model_name, task, rows, {m.metric: m.protocol for m in base}, _environment(),
                         f"python benchmarks/inr.py export {model_name}; fit on a GPU; eval {model_name}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{model_name}.json").write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    md = f"# {model_name}: Big2Small INR at matched size\n\n" + result.markdown()
    md += "\n" + "\n".join(f"- {k}: {d}" for k, d in DESCRIPTION.items()) + "\n"
    md += ("- compress s for INR rows: GPU fitting time of all its tensors (device in the note); "
           "for the others, CPU time here.\n")
    (OUT / f"{model_name}.md").write_text(md)
    plot_pareto(result, OUT / f"{model_name}.png")


def sharing(steps: int, layers: int) -> None:
    """Per-tile SIRENs against one bank shared by MiniLM's first `layers` query matrices (layer index as
    a third coordinate), at the same bits, fitted here on the CPU with `steps` steps (weight error only);
    and per-tile SIRENs with 8-bit parameters (wider, same bits)."""
    from big2small.generators import INRConfig, INRGenerator
    from big2small.layout import MatrixLayout

    loaded = _load("minilm")
    sd = loaded.model.state_dict()
    names = sorted(n for n in sd if n.endswith("attention.self.query.weight"))[:layers]
    weights = [sd[n].float() for n in names]
    layout = MatrixLayout(tuple(weights[0].shape))
    bpw = 4.157  # the 4-bit RTN g128 row's bits per compressed weight
    lines = ["# INR options measured on the CPU: layer sharing and 8-bit SIREN parameters (MiniLM query matrices)", "",
             f"{len(names)} tensors of {list(layout.shape)}; {bpw} bits per weight each (every stored bit); "
             f"{steps} fitting steps on this CPU (2000 on the GPU elsewhere), so errors are higher than in the main tables.", "",
             "| SIRENs | width h | bits per weight | mean relative error | fit s |", "|---|---|---|---|---|"]
    for k, phi in ((1, 16), (1, 8), (len(names), 16)):
        cfg = INRConfig(bits_per_weight=bpw, steps=steps, shared_layers=k, phi_bits=phi)
        t0 = time.perf_counter()
        encs = INRGenerator.encode_many([(cfg, w, layout) for w in weights])
        seconds = time.perf_counter() - t0
        bits = sum(e.total_bits for e in encs) / sum(w.numel() for w in weights)
        err = sum(e.meta["rel_error"] for e in encs) / len(encs)
        label = (f"one per tile per tensor, {phi}-bit parameters" if k == 1 else
                 f"one per tile position, shared by {k} layers (z = layer), {phi}-bit parameters")
        lines.append(f"| {label} | {encs[0].meta['width']} | {bits:.3f} | {err:.4f} | {seconds:.0f} |")
        print(lines[-1], flush=True)
    lines += ["", f"Reproduce: `python benchmarks/inr.py sharing --steps {steps} --layers {layers}`"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sharing.md").write_text("\n".join(lines) + "\n")


PRIMARY = {"minilm": "mean_cosine", "efficientnet-lite0": "top1_agreement", "fashion-resnet": "top1_accuracy",
           "smollm2": "perplexity"}


def summary() -> None:
    """One table (main metric, bits per compressed weight) and one figure across the models measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {m: json.loads((OUT / f"{m}.json").read_text()) for m in PRIMARY if (OUT / f"{m}.json").exists()}
    lines = ["# Big2Small INR against the baselines, at matched size", "",
             "Main metric per model; `bpw` is bits per compressed weight (every stored bit of the compressed "
             "tensors over their count; the rest of the model is identical fp16 in every row). Full tables, with "
             "second metrics, whole-model bpw, weight SQNR and fitting times: the per-model files beside this one.", ""]
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (model, res) in zip(axes[0], results.items()):
        metric = PRIMARY[model]
        rows = res["rows"]
        ref = next(r for r in rows if r["method"] == "fp32")["metrics"][metric]
        lines += [f"## {model} ({metric}; original {ref:.4g})", "", "| method | bpw | " + metric + " | weight SQNR dB |", "|---|---|---|---|"]
        by_method: dict[str, list] = {}
        for r in sorted(rows[1:], key=lambda r: (r["bpw_scope"] or 0)):
            value = r["metrics"].get(metric)
            sq = "-" if r["sqnr_db"] is None else f"{r['sqnr_db']:.2f}"
            lines.append(f"| {r['method']} | {r['bpw_scope']:.3f} | {value:.4g} | {sq} |")
            family = r["method"] if r["method"] not in VARIANTS else _family(r["method"])
            if family in ("inr", "inr_res", "uniform RTN g128", "hyper (ours)", "low-rank"):
                by_method.setdefault(family, []).append((r["bpw_scope"], value))
        lines.append("")
        for name, pts in sorted(by_method.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        ax.axhline(ref, color="k", ls="--", lw=1, label="original")
        if metric == "perplexity":
            ax.set_yscale("log")
        ax.set_xlabel("bits per compressed weight")
        ax.set_ylabel(metric)
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "summary.png", dpi=110)
    plt.close(fig)
    lines.append("![INR against the baselines](summary.png)")
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="stage", required=True)
    e = sub.add_parser("export")
    e.add_argument("model")
    e.add_argument("--variants", default=",".join(VARIANTS))
    e.add_argument("--shards", type=int, default=1)
    e.add_argument("--steps", type=int, default=None, help="fewer fitting steps (default: the INR default, 2000)")
    f = sub.add_parser("fit")
    f.add_argument("carry", type=Path)
    f.add_argument("out", type=Path)
    f.add_argument("--model", required=True)
    f.add_argument("--variants", default=None)
    f.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    v = sub.add_parser("eval")
    v.add_argument("model")
    v.add_argument("--fits", type=Path, action="append", required=True)
    v.add_argument("--steps", type=int, default=None)
    sub.add_parser("summary")
    sh = sub.add_parser("sharing")
    sh.add_argument("--steps", type=int, default=300)
    sh.add_argument("--layers", type=int, default=2)
    args = ap.parse_args(argv)
    if args.stage == "export":
        export(args.model, args.variants.split(","), args.shards, args.steps)
    elif args.stage == "fit":
        fit(args.carry, args.out, args.model, args.variants.split(",") if args.variants else None, args.device)
    elif args.stage == "eval":
        evaluate_model(args.model, args.fits, args.steps)
    elif args.stage == "sharing":
        sharing(args.steps, args.layers)
    else:
        summary()


if __name__ == "__main__":
    main(sys.argv[1:])
