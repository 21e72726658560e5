"""The `big2small` command: a thin layer over the Python API.

User errors print one line to stderr and exit with status 2; no traceback.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from big2small.errors import Big2SmallError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Make trained neural networks small without their training data.")
out = Console()
err = Console(stderr=True)

BOS_HELP = "Perplexity: start token prepended to each window, ID or none (default: the model's own, from its tokenizer and config)."
MODEL_HELP = "A bundled name (smollm2, minilm, efficientnet-lite0, fashion-resnet), an HF model dir, a .gguf or a .safetensors file."


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def _emit_json(data: Any, path: Optional[Path]) -> None:
    text = json.dumps(data, indent=2, default=str)
    if path is None:
        return
    if str(path) == "-":
        sys.stdout.write(text + "\n")
    else:
        path.write_text(text + "\n")


def _plan_table(plan) -> Table:
    t = Table(title="pre-flight: every tensor and what happens to it", show_lines=False)
    for col in ("tensor", "shape", "kind", "stored as", "why"):
        t.add_column(col)
    for e in plan:
        cfg = dataclasses.asdict(e.config)
        method = e.config.method
        stored = method if not cfg else f"{method}(" + ", ".join(f"{k}={v}" for k, v in cfg.items()) + ")"
        name = e.name + (f" (= {', '.join(e.aliases)})" if e.aliases else "")
        cells = (name, "x".join(map(str, e.shape)) or "scalar", e.kind, stored, e.reason + (" [sized to target]" if e.budgeted else ""))
        t.add_row(*map(escape, cells))  # names and reasons are text, not rich markup
    return t


def _plan_summary(plan) -> str:
    counts = Counter((e.config.method if e.compressed else "kept") + (": " + e.reason if not e.compressed else "") for e in plan)
    return "; ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def _size_table(size, info=None) -> Table:
    t = Table(title="size (every stored bit counted)", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("parameters (original, tied once)", f"{size.n_parameters:,}")
    t.add_row("compressed weights", f"{size.n_compressed:,} ({size.n_compressed / max(size.n_parameters, 1):.1%})")
    t.add_row("bits per weight, whole model (bpw_all)", f"{size.bpw_all:.4f}")
    t.add_row("bits per weight, compressed tensors (bpw_scope)", f"{size.bpw_scope:.4f}")
    t.add_row("ratio vs fp32 / vs fp16", f"{size.ratio_vs_fp32:.2f}x / {size.ratio_vs_fp16:.2f}x")
    t.add_row("stored bits", f"{size.bits_total:,} ({_fmt_bytes(size.bits_total / 8)})")
    for k, v in sorted(size.bits_by_item.items()):
        t.add_row(f"  {k}", f"{v:,} bits ({v / max(size.bits_total, 1):.1%})")
    if info is not None:
        t.add_row("bytes on disk: tensors.safetensors", f"{info['tensor_file_bytes']:,}")
        t.add_row("bytes on disk: manifest.json", f"{info['manifest_bytes']:,}")
        t.add_row("bytes on disk: source/ (config, tokenizer)", f"{info['source_bytes']:,}")
        overhead = info["tensor_file_bytes"] - size.bits_total / 8
        t.add_row("tensor file minus stored bits", f"{overhead:,.0f} B (safetensors header, byte rounding)")
    return t


def _method_options(bits, group_size, symmetric, rank, energy, sparsity) -> dict[str, Any]:
    options = {"bits": bits, "group_size": group_size, "symmetric": symmetric, "rank": rank, "energy": energy,
               "sparsity": sparsity}
    return {k: v for k, v in options.items() if v is not None}


def _extra_options(items: list[str]) -> dict[str, Any]:
    from big2small.specs import parse_value

    options = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise Big2SmallError(f"bad --option {item!r}: expected KEY=VALUE")
        options[key.strip().replace("-", "_")] = parse_value(value.strip())
    return options


@app.command()
def compress(
    model: str = typer.Argument(..., help=MODEL_HELP),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Artifact directory to write (e.g. model.b2s)."),
    method: str = typer.Option("uniform", "--method", "-m", help="uniform, hyper, hyper_ref, lowrank, prune, channel_int or inr (Big2Small)."),
    bpw: Optional[float] = typer.Option(None, help="Target bits per weight for the whole model; options left open are chosen to meet it."),
    ratio: Optional[float] = typer.Option(None, help="Target compression ratio against fp32 (same as --bpw 32/RATIO)."),
    bits: Optional[int] = typer.Option(None, help="uniform: code width (1-8); hyper: index width per pair of weights (8 = about 4 bits per weight)."),
    group_size: Optional[int] = typer.Option(None, help="uniform, hyper: weights per group (0 = per channel)."),
    symmetric: Optional[bool] = typer.Option(None, "--symmetric/--asymmetric", help="uniform: grid shape."),
    rank: Optional[int] = typer.Option(None, help="lowrank: rank."),
    energy: Optional[float] = typer.Option(None, help="lowrank: keep this share of singular-value energy."),
    sparsity: Optional[float] = typer.Option(None, help="prune: share of weights set to zero."),
    option: list[str] = typer.Option([], "--option", "-O", help="KEY=VALUE: any option of the method (repeatable), e.g. -O codebook=winding -O scale_grid=1.0/0.9."),
    override: list[str] = typer.Option([], "--override", help="PATTERN=METHOD:k=v,... or PATTERN=keep (name or regex; repeatable; first match wins)."),
    include_embeddings: bool = typer.Option(False, help="Also compress the token embedding and the LM head."),
    min_numel: int = typer.Option(4096, help="Smaller weights are kept uncompressed."),
    raw_dtype: str = typer.Option("float16", help="Storage of uncompressed tensors: float16, bfloat16, float32, same."),
    recipe: Optional[Path] = typer.Option(None, help="A recipe JSON file (replaces the method options above)."),
    device: Optional[str] = typer.Option(None, help="Where encoding runs: cpu (default) or cuda (INR fitting is much faster there)."),
    seed: int = typer.Option(0, help="Seed of every random choice (INR initialisation); same seed, same artifact."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the pre-flight report and stop."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the size report as JSON to this file ('-' = stdout)."),
) -> None:
    """Compress a model and write an artifact (safetensors + JSON manifest)."""
    import big2small as b2s
    from big2small.compress import plan_model
    from big2small.recipe import Recipe
    from big2small.specs import parse_method_spec

    if output is None and not dry_run:
        raise Big2SmallError("give --output PATH for the artifact (or --dry-run)")
    if ratio is not None:
        if bpw is not None:
            raise Big2SmallError("give --bpw or --ratio, not both")
        if not ratio > 1:
            raise Big2SmallError(f"--ratio must be > 1 (compression against fp32), got {ratio}")
        bpw = 32.0 / ratio
    if output is not None and output.exists() and not overwrite:
        raise Big2SmallError(f"{output} exists; pass --overwrite to replace it")
    if recipe is not None:
        if not recipe.is_file():
            raise Big2SmallError(f"{recipe}: no such recipe file")
        try:
            the_recipe = Recipe.from_json(recipe.read_text())
        except Big2SmallError as exc:
            raise Big2SmallError(f"{recipe}: not a valid recipe ({exc})") from None
    else:
        overrides = []
        for item in override:
            pattern, eq, spec = item.partition("=")
            if not eq or not pattern:
                raise Big2SmallError(f"bad --override {item!r}: expected PATTERN=METHOD:k=v or PATTERN=keep")
            if spec == "keep":
                overrides.append((pattern, None))
            else:
                name, opts = parse_method_spec(spec)
                overrides.append((pattern, b2s.GeneratorConfig.from_dict({"method": name, **opts})))
        the_recipe = b2s.make_recipe(method, bpw=bpw, overrides=overrides, include_embeddings=include_embeddings,
                                     min_numel=min_numel, raw_dtype=raw_dtype, seed=seed,
                                     **{**_method_options(bits, group_size, symmetric, rank, energy, sparsity),
                                        **_extra_options(option)})
    err.print(f"loading {model} ...")
    loaded = b2s.load_model(model)
    if dry_run:
        _, entries = plan_model(loaded, the_recipe)
        out.print(_plan_table(entries))
        out.print(_plan_summary(entries))
        return
    cm = b2s.compress(loaded, the_recipe, device=device)
    info = b2s.save(cm, output, overwrite=overwrite)
    size = cm.size()
    err.print(_plan_summary(cm.plan))
    out.print(_size_table(size, info.__dict__))
    out.print(f"wrote {output}")
    _emit_json({"artifact": str(output), "size": size.to_dict(), "bytes_on_disk": {
        "tensor_file": info.tensor_file_bytes, "manifest": info.manifest_bytes, "source": info.source_bytes}}, json_out)


@app.command()
def decompress(
    artifact: Path = typer.Argument(..., help="An artifact directory."),
    output: Path = typer.Argument(..., help="Dense safetensors file to write."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
) -> None:
    """Write a dense safetensors state_dict from an artifact, without the model's class."""
    import big2small as b2s

    b2s.decompress(artifact, output, overwrite=overwrite)
    out.print(f"wrote {output} ({_fmt_bytes(output.stat().st_size)})")


@app.command()
def inspect(
    artifact: Path = typer.Argument(..., help="An artifact directory."),
    tensors: bool = typer.Option(False, "--tensors", help="List every stored tensor."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON ('-' = stdout)."),
) -> None:
    """What an artifact holds and where every bit goes (checks its integrity first)."""
    import big2small as b2s
    from big2small.artifact import MANIFEST, TENSORS

    cm = b2s.load(artifact)
    manifest = b2s.read_manifest(artifact)
    size = cm.size()
    info = {"tensor_file_bytes": (artifact / TENSORS).stat().st_size, "manifest_bytes": (artifact / MANIFEST).stat().st_size,
            "source_bytes": sum(f["bytes"] for f in manifest["files"].values())}
    src = manifest["source"] or {}
    out.print(f"[bold]{artifact}[/bold]: big2small format v{manifest['format_version']}, written by {manifest['library_version']}; "
              f"source {src.get('kind', '?')} {src.get('name', '')} ({src.get('architecture') or src.get('module_class') or ''})")
    methods = Counter(e.method for e in cm.tensors.values())
    out.print("tensors: " + ", ".join(f"{n} {m}" for m, n in sorted(methods.items())))
    out.print(_size_table(size, info))
    if tensors:
        t = Table(title="stored tensors")
        for col in ("tensor", "shape", "method", "bits", "bits/weight"):
            t.add_column(col)
        for name, enc in cm.tensors.items():
            t.add_row(escape(name), "x".join(map(str, enc.layout.shape)) or "scalar", enc.method, f"{enc.total_bits:,}",
                      f"{enc.total_bits / max(enc.numel, 1):.3f}")
        out.print(t)
    _emit_json({"artifact": str(artifact), "source": src, "size": size.to_dict(), "bytes_on_disk": info,
                "tensors": {n: {"method": e.method, "shape": list(e.layout.shape), "bits": e.total_bits} for n, e in cm.tensors.items()}},
               json_out)


@app.command()
def verify(
    artifact: Path = typer.Argument(..., help="An artifact directory."),
    model: Optional[str] = typer.Option(None, "--model", help="The original model (default: the artifact's source, if it can be found). " + MODEL_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON ('-' = stdout)."),
) -> None:
    """Check integrity, decode every tensor, and compare with the original weights."""
    import big2small as b2s

    cm = b2s.load(artifact)
    decoded = {n: t.float() for n, t in cm.state_dict().items() if n not in cm.aliases}
    out.print(f"integrity: ok ({len(cm.tensors)} tensors, every array matches its sha256); decoded: ok")
    if cm.transforms:
        names = ", ".join(t.kind for t in cm.transforms)
        out.print(f"the architecture was changed ({names}): weight error against the original is not defined")
        return
    spec = model or (cm.source.name if cm.source is not None else None)
    if spec is None:
        out.print("no original model given (--model): weight error not measured")
        return
    original = b2s.load_model(spec)
    state = original.weights if original.model is None else original.model.state_dict()
    missing = sorted(set(decoded) - set(state))
    if missing:
        raise Big2SmallError(f"{spec} does not match the artifact: it lacks {len(missing)} tensor(s), e.g. {missing[0]}")
    report = cm.weight_error(state, decoded)
    if report is None:
        out.print("no compressed tensors: every tensor is stored raw")
        return
    t = Table(title=f"weight error vs {spec} (compressed tensors)")
    for col in ("tensor", "numel", "relative error", "SQNR dB"):
        t.add_column(col)
    for row in report.table():
        t.add_row(escape(row["name"]), f"{row['numel']:,}", f"{row['rel_error']:.4g}", f"{row['sqnr_db']:.2f}")
    out.print(t)
    out.print(report.describe())
    _emit_json({"artifact": str(artifact), "model": spec, "weight_error": report.table()}, json_out)


def _load_for_eval(target: str):
    """A model to evaluate: an artifact (restored) or a model spec. Returns (model, tokenizer, task, source spec)."""
    import big2small as b2s
    from big2small.artifact import MANIFEST
    from big2small.models import get_task, load_tokenizer_from

    p = Path(target)
    if p.is_dir() and (p / MANIFEST).is_file():
        cm = b2s.load(p)
        model = b2s.restore(cm)
        task = get_task(cm.source.task, cm.source.architecture).name  # resolves earlier versions' names
        return model, load_tokenizer_from(cm.source), task, cm.source.name
    loaded = b2s.load_model(target)
    if loaded.model is None:
        raise Big2SmallError(f"{target} is a bare state_dict: nothing to run (use verify for weight error)")
    return loaded.model, loaded.tokenizer, loaded.source.task, target


@app.command("eval")
def eval_(
    target: str = typer.Argument(..., help="An artifact directory, or a model. " + MODEL_HELP),
    reference: Optional[str] = typer.Option(None, help="Original model for fidelity metrics (default: the artifact's source)."),
    windows: int = typer.Option(20, help="Perplexity: number of windows."),
    context: int = typer.Option(512, help="Perplexity: tokens per window."),
    bos: Optional[str] = typer.Option(None, "--bos", help=BOS_HELP),
    documents: int = typer.Option(300, help="Encoders: documents for embedding fidelity."),
    photos: int = typer.Option(256, help="Image classifiers: photo crops for agreement."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the figures as JSON ('-' = stdout)."),
) -> None:
    """Measure a model on its task (perplexity, embedding fidelity, classifier agreement)."""
    from big2small.evaluate.suite import EvalSettings
    from big2small.models.tasks import evaluate, get_task, reference_outputs

    settings = EvalSettings(context=context, windows=windows, bos=bos, documents=documents, photos=photos)
    model, tok, task, source_spec = _load_for_eval(target)
    ref = None
    ref_spec = reference or (source_spec if source_spec != target else None)
    if ref_spec and get_task(task).needs_reference:
        ref_model, ref_tok, _, _ = _load_for_eval(ref_spec)
        ref = reference_outputs(ref_model, task, ref_tok or tok, settings)
    rows = evaluate(model, task, tok, reference=ref, settings=settings)
    for r in rows:
        out.print(r.text)
    _emit_json({"target": target, "task": task, "reference": ref_spec, "metrics": [r.to_dict() for r in rows]}, json_out)


@app.command()
def bench(
    model: str = typer.Argument(..., help=MODEL_HELP),
    configs: list[str] = typer.Option([], "--config", help="METHOD:k=v,... to run (repeatable). Default: the standard sweep."),
    matched: bool = typer.Option(True, help="Also run lowrank and prune at each uniform config's bits per weight."),
    out_dir: Path = typer.Option(Path("bench-out"), "--out-dir", help="Where the table (Markdown), JSON and plot (PNG) go."),
    windows: int = typer.Option(20, help="Perplexity: number of windows."),
    bos: Optional[str] = typer.Option(None, "--bos", help=BOS_HELP),
    documents: int = typer.Option(300, help="Encoders: documents for embedding fidelity."),
    photos: int = typer.Option(256, help="Image classifiers: photo crops for agreement."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the rows as JSON here ('-' = stdout)."),
) -> None:
    """Several methods and sizes on one model: one table, one Pareto plot of quality vs bits per weight."""
    from big2small.bench import DEFAULT_SWEEP, run_bench
    from big2small.evaluate.suite import EvalSettings

    settings = EvalSettings(windows=windows, bos=bos, documents=documents, photos=photos)
    result = run_bench(model, list(configs) or list(DEFAULT_SWEEP), matched=matched, settings=settings, out_dir=out_dir,
                       command="big2small bench " + " ".join(sys.argv[2:]))
    out.print(result.markdown())
    out.print(f"wrote {out_dir}/")
    _emit_json(result.to_dict(), json_out)


@app.command("selfcompress")
def selfcompress_(
    gamma: list[float] = typer.Option([0.005, 0.015, 0.05], "--gamma", "-g", help="Weight of the size loss (repeatable): one network per value."),
    epochs: int = typer.Option(10, help="Training epochs per network."),
    batch_size: int = typer.Option(256, help="Training batch size."),
    lr: float = typer.Option(1e-3, help="Adam learning rate of the weights."),
    quantizer_lr: Optional[float] = typer.Option(None, help="Adam learning rate of the bit depths and exponents (default: --lr)."),
    init: str = typer.Option("scratch", help="scratch (b0 = 2) or fp32 (fine-tune the fp32 reference from b0 = 8)."),
    fp32: bool = typer.Option(True, "--fp32/--no-fp32", help="Also train the fp32 reference (same network and schedule)."),
    limit: Optional[int] = typer.Option(None, help="Train on the first N training images only (quick runs)."),
    seed: int = typer.Option(0, help="Seed of the initialisation and the data order."),
    target_bits: Optional[float] = typer.Option(None, help="Keep each network's most accurate epoch (validation) at or below this many bits per weight (Q)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Write each network's artifact here (gamma-<g>.b2s)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON ('-' = stdout)."),
) -> None:
    """Train a self-compressing CNN on Fashion-MNIST (needs the Debian data set) for several gammas;
    report test accuracy, the share of bits left (vs fp32) and the share of weights left."""
    from big2small.selfcompress.sweep import run_recipe
    from big2small.training import TrainConfig

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, quantizer_lr=quantizer_lr, seed=seed,
                         target_bits=target_bits)
    config.validate()
    if limit is not None and limit < 1:
        raise Big2SmallError(f"--limit must be positive, got {limit}")
    points, _ = run_recipe(list(gamma), config, out_dir=out_dir, fp32=fp32, init=init, limit=limit)
    table = Table(title="self-compression on Fashion-MNIST (test accuracy of the exported, reloaded network)")
    for col in ("network", "test accuracy", "bits left vs fp32", "weights left", "stored", "train time"):
        table.add_column(col)
    for p in points:
        name = "fp32 reference" if p.gamma is None else f"gamma {p.gamma:g}"
        table.add_row(name, f"{100 * p.test_accuracy:.2f}%", f"{100 * p.bits_share:.2f}%", f"{100 * p.weights_share:.1f}%",
                      _fmt_bytes(p.stored_bits / 8), f"{p.train_seconds:.0f} s")
    out.print(table)
    if out_dir is not None:
        out.print(f"wrote {out_dir}/")
    _emit_json({"points": [p.to_dict() for p in points], "train": config.__dict__, "init": init}, json_out)

@app.command("fold")
def fold_(
    model: str = typer.Argument(..., help=MODEL_HELP),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Artifact directory to write (e.g. folded.b2s)."),
    sparsity: Optional[float] = typer.Option(None, help="Fraction of all parameters to remove (default 0.3 unless --ratio)."),
    ratio: Optional[float] = typer.Option(None, help="Fold ratio r of every group instead (k = floor(n (1 - r)) units kept)."),
    allocation: str = typer.Option("cost", help="cost (units removed where merging loses least, per parameter saved) or uniform (one ratio for every group)."),
    repair: str = typer.Option("ar", help="ar (data-free variance repair), naive (none) or data (BatchNorm statistics re-estimated on real inputs; not data-free)."),
    prune: Optional[str] = typer.Option(None, help="l1 or l2: structured magnitude pruning of the same groups instead of folding (the baseline)."),
    group_ratio: list[str] = typer.Option([], "--group-ratio", help="PATTERN=R: fold ratio of the groups whose name matches (repeatable)."),
    skip: list[str] = typer.Option([], "--skip", help="PATTERN: never fold matching groups (repeatable)."),
    mlp: bool = typer.Option(True, "--mlp/--no-mlp", help="Transformers: fold MLP units."),
    attention: bool = typer.Option(True, "--attention/--no-attention", help="Transformers: fold attention heads."),
    norm_repair: str = typer.Option("none", help="Groups without BatchNorm (transformer MLPs): none, lsq (refit the output by least squares on synthetic inputs; data-free) or scale_rows (AR factor on merged rows)."),
    multiple_of: int = typer.Option(1, help="Keep a multiple of this many units per group."),
    seed: int = typer.Option(0, help="k-means seed."),
    then: Optional[str] = typer.Option(None, "--then", help="METHOD:k=v,...: compress the folded tensors too, e.g. uniform:bits=4,group_size=128."),
    raw_dtype: str = typer.Option("float32", help="Storage of the tensors --then leaves uncompressed (float32 keeps the folded model exact)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the groups and what would be folded, then stop."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the fold report as JSON ('-' = stdout)."),
) -> None:
    """Fold a model: merge similar channels, heads and MLP units so it really becomes narrower."""
    import big2small as b2s
    from big2small.folding import FoldConfig, find_groups, fold
    from big2small.folding.export import to_compressed
    from big2small.models.tasks import get_task
    from big2small.specs import parse_method_spec

    if output is None and not dry_run:
        raise Big2SmallError("give --output PATH for the artifact (or --dry-run)")
    if output is not None and output.exists() and not overwrite:
        raise Big2SmallError(f"{output} exists; pass --overwrite to replace it")
    ratios = {}
    for item in group_ratio:
        pattern, eq, value = item.rpartition("=")
        try:
            ratio_value = float(value)
        except ValueError:
            ratio_value = None
        if not eq or not pattern or ratio_value is None:
            raise Big2SmallError(f"bad --group-ratio {item!r}: expected PATTERN=R")
        ratios[pattern] = ratio_value
    config = FoldConfig(sparsity=sparsity if sparsity is not None or ratio is not None else 0.3, ratio=ratio, allocation=allocation,
                        ratios=ratios, skip=list(skip), selection=prune or "fold", repair=repair, norm_repair=norm_repair,
                        fold_mlp=mlp, fold_attention=attention, multiple_of=multiple_of, seed=seed)
    config.validate()
    recipe = None
    if then is not None:
        name, opts = parse_method_spec(then)
        recipe = b2s.make_recipe(name, raw_dtype=raw_dtype, **opts)
    err.print(f"loading {model} ...")
    loaded = b2s.load_model(model)
    if loaded.model is None:
        raise Big2SmallError(f"{model} is a bare state_dict: folding needs the model's structure (an HF dir or a bundled model)")
    if dry_run:
        report = find_groups(loaded.model, gqa_mode=config.gqa_mode, mlp=mlp, attention=attention)
        t = Table(title="coupling groups")
        for col in ("group", "kind", "units", "foldable"):
            t.add_column(col)
        for g in report.groups:
            t.add_row(escape(g.name), g.kind, str(g.size), "yes" if g.foldable else escape(f"no: {g.reason}"))
        out.print(t)
        for name, why in report.unfolded.items():
            if all(g.name != name for g in report.groups):
                out.print(f"not folded: {escape(name)}: {escape(why)}")
        return
    task = get_task(loaded.source.task, loaded.source.architecture)
    data = task.calibration_batches() if repair == "data" else None
    result = fold(loaded.model, config, data=data, example_input=task.example_input(loaded.model))
    cm = to_compressed(result, source=loaded.source, recipe=recipe, progress=True)
    info = b2s.save(cm, output, overwrite=overwrite)
    t = Table(title=f"{'pruned (' + prune + ')' if prune else 'folded'}, repair {repair}" +
              ("" if result.data_free else " (uses real data)"), show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("parameters before / after", f"{result.parameters_before:,} / {result.parameters_after:,}")
    t.add_row("parameters removed", f"{result.sparsity:.1%}")
    if result.macs_before:
        t.add_row("MACs per example before / after", f"{result.macs_before:,} / {result.macs_after:,} "
                  f"({1 - result.macs_after / result.macs_before:.1%} fewer)")
    t.add_row("groups folded", f"{sum(g.units_after < g.units_before for g in result.groups)} of {len(result.groups)}"
              + (f" (uniform r = {result.ratio:.3f})" if result.ratio is not None else " (widths by merge cost)"))
    t.add_row("time to fold", f"{result.seconds:.1f} s")
    out.print(t)
    for name, why in result.unfolded.items():
        err.print(f"not folded: {escape(name)}: {escape(why)}")
    out.print(_size_table(cm.size(), info.__dict__))
    out.print(f"wrote {output}")
    _emit_json({"artifact": str(output), "fold": result.to_dict(), "size": cm.size().to_dict()}, json_out)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit status 2."""
    try:
        app()
    except Big2SmallError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
