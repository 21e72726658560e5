"""One function per command: its options, their checks, one call into the library, the report
rendered. The library is imported inside each function, so that --help and argument errors
answer without loading torch.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from big2small.cli import options, render
from big2small.errors import Big2SmallError

STREAMING = "big2small.streaming"  # the module of the job the workers run (streaming.run_unit)

BOS_HELP = "Perplexity: start token prepended to each window, ID or none (default: the model's own, from its tokenizer and config)."
MODEL_HELP = "A bundled name (smollm2, minilm, efficientnet-lite0, fashion-resnet), an HF model dir, a .gguf or a .safetensors file."

# Options of more than one command.
Model = Annotated[str, typer.Argument(help=MODEL_HELP)]
Windows = Annotated[int, typer.Option(help="Perplexity: number of windows.")]
Bos = Annotated[Optional[str], typer.Option("--bos", help=BOS_HELP)]
Documents = Annotated[int, typer.Option(help="Encoders: documents for embedding fidelity.")]
Photos = Annotated[int, typer.Option(help="Image classifiers: photo crops for agreement.")]
MaxShardSize = Annotated[str, typer.Option(help="Write the artifact's arrays in tensor files of at most this size "
                                           "(e.g. 5GB, 500MB; GB = 10^9 bytes), as Hugging Face shards a checkpoint: "
                                           "tensors-00001-of-0000N.safetensors ...; under it, one tensors.safetensors.")]
# Data-free distillation (fold: repair of the folded weights; compress: the codec's scales).
DistillSteps = Annotated[int, typer.Option("--distill", help="Distil from the original on synthetic inputs (data-free): this many AdamW steps (0: none). fold: repairs the folded weights; compress: trains the scales of uniform, hyper or trellis codes and re-chooses the codes, or the INR's SIREN parameters, stored bits unchanged.")]
DistillSamples = Annotated[int, typer.Option(help="--distill: synthetic inputs to make (cached on disk), of which 8 are held out to measure the loss.")]
DistillSeed = Annotated[int, typer.Option(help="--distill: seed of the synthetic inputs and the batch order.")]
DistillSeqLen = Annotated[int, typer.Option(help="--distill: tokens per synthetic text sequence (start token included).")]
DistillSeconds = Annotated[Optional[float], typer.Option(help="--distill: stop training after this many seconds (a time budget).")]
DistillLr = Annotated[Optional[float], typer.Option(help="--distill: AdamW learning rate (default: fold and distill 5e-5 on the weights; compress 5e-3 on the scales' log-gains, 1e-4 on the INR's parameters).")]
DistillSource = Annotated[str, typer.Option(help="--distill: where the inputs come from: auto (the model's own route), self, smollm2, random or inversion.")]
DistillImageSize = Annotated[Optional[int], typer.Option(help="--distill, image classifiers: side of the synthetic images in pixels (default: the model's input size; smaller is much cheaper to invert).")]
DistillInversionSteps = Annotated[Optional[int], typer.Option(help="--distill, image classifiers: Adam steps optimising each batch of synthetic images to match the BatchNorm statistics (default 200).")]


def _require_output(output: Optional[Path], dry_run: bool) -> None:
    if output is None and not dry_run:
        raise Big2SmallError("give --output PATH for the artifact (or --dry-run)")


def compress(
    model: Model,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Artifact directory to write (e.g. model.b2s)."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="uniform, trellis, hyper, hyper_ref, lowrank, prune, channel_int or inr (Big2Small). Default: with a size target, the best per tensor (trellis widths or kept at 16 bits, chosen by allocation); without one, uniform."),
    bpw: Optional[float] = typer.Option(None, help="Target bits per weight for the whole model, every stored bit counted; filled to within 1% under where the method's sizes can be mixed."),
    ratio: Optional[float] = typer.Option(None, help="Target compression ratio against fp32 (same as --bpw 32/RATIO)."),
    size_mb: Optional[float] = typer.Option(None, "--size-mb", help="Target size of the stored weights in MB (10^6 bytes; the manifest adds a few KB), instead of --bpw."),
    bpw_over: Optional[str] = typer.Option(None, "--bpw-over", help="What --bpw/--ratio counts: model (default: every stored bit over the original parameters) or compressed (the compressed tensors' bits over their own weights, bpw_scope; the other tensors are kept as they would be without a target)."),
    allocate: str = typer.Option("auto", help="With a size target: how bits are shared among tensors: auto (by output error where the model has a data-free probe, else by weight error), output, weights, or equal (the same share for every tensor)."),
    bits: Optional[float] = typer.Option(None, help="Bits per compressed weight, for every method (uniform, channel_int: the code width; hyper: index width bits x dim; lowrank, inr: the budget per weight); scales and headers add a little. A method's own knobs: -O KEY=VALUE."),
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
    workers: Optional[int] = typer.Option(None, "--workers", help="Encode on this many worker processes (default: every core; models under 16 M weights in this process). The artifact is the same whatever the number."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Encode on Ray: 'local' starts it on this machine (with --workers CPUs), 'auto' or ray://HOST:PORT joins a cluster (install big2small[ray]; the model, the output's directory and big2small must be reachable from every node)."),
    seed: int = typer.Option(0, help="Seed of every random choice (INR initialisation); same seed, same artifact."),
    distill: DistillSteps = 0,
    distill_samples: DistillSamples = 264,
    distill_seed: DistillSeed = 0,
    distill_seq_len: DistillSeqLen = 128,
    distill_seconds: DistillSeconds = None,
    distill_lr: DistillLr = None,
    distill_source: DistillSource = "auto",
    distill_weight_loss: float = typer.Option(0.0, help="--distill: add this times the mean relative squared weight error (||W - W0||^2 / ||W0||^2 per trained tensor) to the distillation loss."),
    distill_vectors: bool = typer.Option(False, "--distill-vectors", help="--distill: also train the one-dimensional tensors stored raw (normalisation gains, biases), in their stored dtype: no bits added."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the pre-flight report and stop."),
    max_shard_size: MaxShardSize = "5GB",
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the size report (with --dry-run: the plan) as JSON to this file ('-' = stdout)."),
) -> None:
    """Compress a model and write an artifact (safetensors + JSON manifest). Safetensors
    checkpoints (a file, an HF directory, sharded or not) and GGUF files are read one tensor at a
    time; a run that stops is resumed by running the same command again. With --distill, the
    model is loaded whole and encoded in this process."""
    _require_output(output, dry_run)
    shard_bytes = options.byte_size(max_shard_size)
    bpw = options.target_bpw(bpw, ratio, size_mb)
    bpw_over = options.target_over(bpw_over, size_mb)
    distill_config = options.distill_config(distill, samples=distill_samples, seed=distill_seed, seq_len=distill_seq_len,
                                            max_seconds=distill_seconds, source=distill_source,
                                            weight_loss=distill_weight_loss, train_vectors=distill_vectors,
                                            lr=distill_lr if distill_lr is not None else options.codec_lr(method))
    if distill_config is not None and (ray is not None or workers is not None):
        raise Big2SmallError("--distill encodes in this process: leave out --workers and --ray")
    from big2small.executors import default_executor  # no PyTorch: the workers start before this process imports it

    # Workers or Ray asked for: the executor does not depend on the model, so its workers start up
    # (the fork server, or Ray's workers, importing PyTorch and big2small) now, while this process
    # imports them, opens the model and plans it, not after.
    # --device cuda (no index): the workers share this host's GPUs, or Ray's (Executor.gpu).
    gpu = device is not None and device.strip().lower() == "cuda"
    early = None if dry_run or (workers is None and ray is None) else default_executor(None, workers, ray, gpu)
    with early.started(STREAMING) if early is not None else contextlib.nullcontext() as early:
        if method is None and bpw is None and size_mb is None:
            method = "uniform"
        import big2small as b2s
        from big2small.compress import count_parameters, plan_infos, resolve_device
        from big2small.reports import CompressReport, PlanReport
        from big2small.streaming import compress_to_artifact, open_model

        if output is not None:
            b2s.ensure_writable(output, overwrite=overwrite)
        resolve_device(device)  # a device this machine lacks is refused before the model loads
        if size_mb is not None:
            bpw = 1.0  # a stand-in that makes the recipe size itself; the model's count sets it below
        if recipe is not None:
            the_recipe = options.recipe_from_file(recipe)
            if bpw is not None:
                the_recipe.target_bpw = bpw
            if bpw_over is not None:
                the_recipe.target_over = bpw_over
        else:
            the_recipe = options.recipe_from_options(
                method, bpw=bpw, bits=bits, override=override, option=option, include_embeddings=include_embeddings,
                min_numel=min_numel, raw_dtype=raw_dtype, seed=seed, allocate=allocate, target_over=bpw_over or "model",
                method_options={"group_size": group_size, "symmetric": symmetric, "rank": rank,
                                "energy": energy, "sparsity": sparsity})
        out = render.Output(json_out)
        render.notes.print(f"loading {model} ...")
        if distill_config is not None and not dry_run:
            loaded = b2s.load_model(model)
            if size_mb is not None:
                from big2small.recipe import describe_module_tensors
                if loaded.model is None:
                    raise Big2SmallError(f"{model} is a bare state_dict: distillation needs the model's structure")
                the_recipe.target_bpw = size_mb * 8e6 / sum(i.numel for i in describe_module_tensors(loaded.model)
                                                             if i.is_parameter)
            cm = b2s.compress(loaded, the_recipe, device=device, distill=distill_config)
            report = CompressReport.of(cm, b2s.save(cm, output, overwrite=overwrite))
            render.show_compress(out.console, report)
            out.json(report.to_dict())
            return
        with contextlib.ExitStack() as stack:
            checkpoint, transforms, n_parameters = open_model(model, the_recipe)
            if size_mb is not None:  # bits per weight of the original model's parameters
                n = n_parameters if n_parameters is not None else sum(i.numel for i in checkpoint.infos if i.is_parameter)
                the_recipe.target_bpw = size_mb * 8e6 / n
            if dry_run:
                entries = plan_infos(checkpoint.infos, the_recipe, n_parameters, model=checkpoint.probe_model(),
                                     source=checkpoint.source, progress=True)
                plan = PlanReport.of(entries, the_recipe, n_parameters if n_parameters is not None else count_parameters(entries))
                render.show_plan(out.console, plan)
                out.json(plan.to_dict())
                return
            executor = early or stack.enter_context(default_executor(checkpoint, workers, ray, gpu).started(STREAMING))
            cm, written = compress_to_artifact(checkpoint, the_recipe, output, overwrite=overwrite, device=device,
                                               executor=executor, transforms=transforms, n_parameters=n_parameters,
                                               max_shard_bytes=shard_bytes)
        report = CompressReport.of(cm, written)
        render.show_compress(out.console, report)
        out.json(report.to_dict())


def decompress(
    artifact: Path = typer.Argument(..., help="An artifact directory."),
    output: Path = typer.Argument(..., help="Dense safetensors file to write (with --max-shard-size: a directory)."),
    dtype: Optional[str] = typer.Option(None, help="float16, bfloat16 or float32 for every floating tensor (default: each tensor's dtype when compressed; HF models load in float32)."),
    max_shard_size: Optional[str] = typer.Option(None, help="Write OUTPUT as a directory in Hugging Face's sharded layout, files of at most this size (e.g. 2GB, 500MB), with the model's config and tokenizer."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
) -> None:
    """Write a dense safetensors state_dict from an artifact, without the model's class."""
    shard_bytes = options.byte_size(max_shard_size) if max_shard_size is not None else None
    import big2small as b2s

    written = b2s.decompress(artifact, output, overwrite=overwrite, dtype=dtype, max_shard_bytes=shard_bytes)
    render.show_written_file(render.Output(None).console, written)


def inspect(
    artifact: Path = typer.Argument(..., help="An artifact directory."),
    tensors: bool = typer.Option(False, "--tensors", help="List every stored tensor."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON ('-' = stdout)."),
) -> None:
    """What an artifact holds and where every bit goes (checks its integrity first)."""
    from big2small.reports import inspect_artifact

    out = render.Output(json_out)
    report = inspect_artifact(artifact)
    render.show_inspect(out.console, report, tensors=tensors)
    out.json(report.to_dict())


def verify(
    artifact: Path = typer.Argument(..., help="An artifact directory."),
    model: Optional[str] = typer.Option(None, "--model", help="The original model (default: the artifact's source, if it can be found). " + MODEL_HELP),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON ('-' = stdout)."),
) -> None:
    """Check integrity, decode every tensor, and compare with the original weights."""
    from big2small.reports import verify_artifact

    out = render.Output(json_out)
    report = verify_artifact(artifact, model)
    render.show_verify(out.console, report)
    out.json(report.to_dict())


def eval_(
    target: str = typer.Argument(..., help="An artifact directory, or a model. " + MODEL_HELP),
    reference: Optional[str] = typer.Option(None, help="The original model, measured beside the target and compared with by fidelity metrics (default: an artifact's source). " + MODEL_HELP),
    windows: Windows = 20,
    context: int = typer.Option(512, help="Perplexity: tokens per window."),
    bos: Bos = None,
    documents: Documents = 300,
    photos: Photos = 256,
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Read the original's figures from the cache when this model was measured under this protocol before (--no-cache: measure it again)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the figures as JSON ('-' = stdout)."),
) -> None:
    """Measure a model on its task (perplexity, embedding fidelity, classifier agreement), beside
    its original (an artifact's source, or --reference) under the same protocol."""
    from big2small.evaluate.suite import EvalSettings
    from big2small.reports import evaluate_target

    out = render.Output(json_out)
    settings = EvalSettings(context=context, windows=windows, bos=bos, documents=documents, photos=photos)
    report = evaluate_target(target, reference=reference, settings=settings, use_cache=cache)
    render.show_eval(out.console, report)
    out.json(report.to_dict())


def bench(
    model: Model,
    configs: list[str] = typer.Option([], "--config", help="METHOD:k=v,... to run (repeatable; method options by their own names). Default: uniform at 8/4/3/2 bits, groups of 128 and 64, and hyper at about 4/3/2 bits per weight."),
    matched: bool = typer.Option(True, help="Also run lowrank and prune at each uniform config's bits per weight."),
    out_dir: Path = typer.Option(Path("bench-out"), "--out-dir", help="Where the table (Markdown), JSON and plot (PNG) go."),
    windows: Windows = 20,
    bos: Bos = None,
    documents: Documents = 300,
    photos: Photos = 256,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the rows as JSON here ('-' = stdout)."),
) -> None:
    """Several methods and sizes on one model: one table, one Pareto plot of quality vs bits per weight."""
    from big2small.bench import DEFAULT_SWEEP, run_bench
    from big2small.evaluate.suite import EvalSettings

    out = render.Output(json_out)
    settings = EvalSettings(windows=windows, bos=bos, documents=documents, photos=photos)
    result = run_bench(model, list(configs) or list(DEFAULT_SWEEP), matched=matched, settings=settings, out_dir=out_dir,
                       command="big2small bench " + " ".join(sys.argv[2:]))
    render.show_bench(out.console, result, out_dir)
    out.json(result.to_dict())


def selfcompress(
    gamma: list[float] = typer.Option([0.005, 0.015, 0.05], "--gamma", "-g", help="Weight of the size loss (repeatable): one network per value."),
    epochs: int = typer.Option(10, help="Training epochs per network (with --distill: of the fp32 teacher only)."),
    batch_size: int = typer.Option(256, help="Training batch size."),
    lr: float = typer.Option(1e-3, help="Adam learning rate of the weights."),
    quantizer_lr: Optional[float] = typer.Option(None, help="Adam learning rate of the bit depths and exponents (default: --lr)."),
    init: Optional[str] = typer.Option(None, help="scratch (b0 = 2) or fp32 (fine-tune the fp32 reference from b0 = 8). Default: scratch; fp32 with --distill."),
    fp32: bool = typer.Option(True, "--fp32/--no-fp32", help="Also train the fp32 reference (same network and schedule)."),
    limit: Optional[int] = typer.Option(None, help="Train on the first N training images only (quick runs)."),
    seed: int = typer.Option(0, help="Seed of the initialisation and the data order."),
    target_bits: Optional[float] = typer.Option(None, help="Keep each network's most accurate epoch (validation) at or below this many bits per weight (Q)."),
    distill: Annotated[int, typer.Option("--distill", help="Data-free: train each self-compressing network for this many steps on synthetic images only (inverted from the teacher's BatchNorm statistics), with the distillation loss against the teacher's logits (0: on the real labelled images). The teacher is --teacher, or the fp32 reference trained here.")] = 0,
    distill_samples: DistillSamples = 2048,
    distill_seed: DistillSeed = 0,
    distill_seconds: DistillSeconds = None,
    distill_lr: Annotated[Optional[float], typer.Option(help="--distill: Adam learning rate of the weights (default: --lr).")] = None,
    distill_source: DistillSource = "auto",
    teacher: Optional[Path] = typer.Option(None, help="--distill: the trained FashionCNN to compress, a safetensors state dict (then no training image is read; the test set is for the reported accuracy)."),
    distill_shift: Optional[int] = typer.Option(None, help="--distill: train on random variants of the synthetic images, translated by up to this many pixels (0: none) and mirrored left-right unless --distill-no-flip; the teacher's logits are recomputed on each variant. With --distill-lr 1e-4 this closed the gap to real images (docs/self-compression.md)."),
    distill_flip: bool = typer.Option(True, "--distill-flip/--distill-no-flip", help="--distill-shift: also mirror each image left-right with probability 1/2."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Write each network's artifact here (gamma-<g>.b2s)."),
    max_shard_size: MaxShardSize = "5GB",
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the results as JSON ('-' = stdout)."),
) -> None:
    """Train a self-compressing CNN on Fashion-MNIST (needs the Debian data set) for several gammas;
    report test accuracy, the share of bits left (vs fp32) and the share of weights left. With
    --distill, the networks learn from synthetic images only (data-free)."""
    if limit is not None and limit < 1:
        raise Big2SmallError(f"--limit must be positive, got {limit}")
    shard_bytes = options.byte_size(max_shard_size)
    distill_config = options.distill_config(distill, samples=distill_samples, seed=distill_seed,
                                            max_seconds=distill_seconds, source=distill_source,
                                            lr=distill_lr if distill_lr is not None else lr)
    if distill_config is None and (teacher is not None or distill_lr is not None or distill_seconds is not None
                                   or distill_shift is not None):
        raise Big2SmallError("--teacher, --distill-lr, --distill-seconds and --distill-shift need --distill STEPS")
    if distill_shift is not None and distill_shift < 0:
        raise Big2SmallError(f"--distill-shift must be >= 0 pixels, got {distill_shift}")
    if distill_config is not None and init == "scratch":
        raise Big2SmallError("--distill fine-tunes the teacher from 8 bits: leave out --init scratch")
    init = init or ("fp32" if distill_config is not None else "scratch")
    if teacher is not None and not teacher.is_file():
        raise Big2SmallError(f"--teacher {teacher}: no such file")
    from big2small.distill.augment import AugmentConfig
    from big2small.selfcompress.sweep import load_teacher, run_recipe
    from big2small.training import TrainConfig

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, quantizer_lr=quantizer_lr, seed=seed,
                         target_bits=target_bits)
    config.validate()
    model = load_teacher(teacher) if teacher is not None else None
    augment = AugmentConfig(flip=distill_flip, max_shift=distill_shift) if distill_shift is not None else None
    out = render.Output(json_out)
    points, _ = run_recipe(list(gamma), config, out_dir=out_dir, fp32=fp32, init=init, limit=limit,
                           max_shard_size=shard_bytes, distill=distill_config, teacher=model, augment=augment)
    render.show_selfcompress(out.console, points, out_dir)
    out.json({"points": [p.to_dict() for p in points], "train": config.__dict__, "init": init,
              "distill": distill_config.to_dict() if distill_config is not None else None,
              "augment": augment.to_dict() if augment is not None else None})


def fold(
    model: Model,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Artifact directory to write (e.g. folded.b2s)."),
    sparsity: Optional[float] = typer.Option(None, help="Fraction of all parameters to remove (default 0.3 unless --ratio)."),
    ratio: Optional[float] = typer.Option(None, help="Fold ratio r of every group instead (k = floor(n (1 - r)) units kept)."),
    allocation: str = typer.Option("cost", help="cost (units removed where merging loses least, per parameter saved) or uniform (one ratio for every group)."),
    repair: str = typer.Option("ar", help="ar (data-free variance repair), naive (none) or data (BatchNorm statistics re-estimated on real inputs; not data-free)."),
    prune: Optional[str] = typer.Option(None, help="l1 or l2: structured magnitude pruning of the same groups instead of folding (the baseline); activation (transformers): keep the units that write the most into the residual stream on the model's synthetic inputs."),
    group_ratio: list[str] = typer.Option([], "--group-ratio", help="PATTERN=R: fold ratio of the groups whose name matches (repeatable)."),
    skip: list[str] = typer.Option([], "--skip", help="PATTERN: never fold matching groups (repeatable)."),
    mlp: bool = typer.Option(True, "--mlp/--no-mlp", help="Transformers: fold MLP units."),
    attention: bool = typer.Option(True, "--attention/--no-attention", help="Transformers: fold attention heads."),
    norm_repair: str = typer.Option("none", help="Groups without BatchNorm (transformer MLPs): none, lsq (refit the output by least squares on synthetic inputs; data-free), scale_rows (AR factor on merged rows) or sequential (refit each folded MLP/attention output block by block on the model's own hidden states for its synthetic inputs, the --distill-samples/-seq-len/-source ones; data-free)."),
    multiple_of: int = typer.Option(1, help="Keep a multiple of this many units per group."),
    seed: int = typer.Option(0, help="k-means seed."),
    then: Optional[str] = typer.Option(None, "--then", help="METHOD:k=v,...: compress the folded tensors too, e.g. uniform:bits=4,group_size=128."),
    raw_dtype: str = typer.Option("float32", help="Storage of the tensors --then leaves uncompressed (float32 keeps the folded model exact)."),
    distill: DistillSteps = 0,
    distill_samples: DistillSamples = 264,
    distill_seed: DistillSeed = 0,
    distill_seq_len: DistillSeqLen = 128,
    distill_seconds: DistillSeconds = None,
    distill_lr: DistillLr = None,
    distill_source: DistillSource = "auto",
    distill_image_size: DistillImageSize = None,
    distill_inversion_steps: DistillInversionSteps = None,
    dry_run: bool = typer.Option(False, "--dry-run", help="List the groups and what would be folded, then stop."),
    max_shard_size: MaxShardSize = "5GB",
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the fold report (with --dry-run: the groups) as JSON ('-' = stdout)."),
) -> None:
    """Fold a model: merge similar channels, heads and MLP units so it really becomes narrower."""
    _require_output(output, dry_run)
    shard_bytes = options.byte_size(max_shard_size)
    ratios = options.group_ratios(group_ratio)
    import big2small as b2s
    from big2small.folding import FoldConfig, find_groups, fold as fold_model
    from big2small.folding.export import to_compressed
    from big2small.models.tasks import get_task
    from big2small.reports import CompressReport, FoldPlanReport, FoldReport

    if output is not None:
        b2s.ensure_writable(output, overwrite=overwrite)
    config = FoldConfig(sparsity=sparsity if sparsity is not None or ratio is not None else 0.3, ratio=ratio, allocation=allocation,
                        ratios=ratios, skip=list(skip), selection=prune or "fold", repair=repair, norm_repair=norm_repair,
                        fold_mlp=mlp, fold_attention=attention, multiple_of=multiple_of, seed=seed)
    config.validate()
    # The synthetic inputs serve distillation and the calibrated selection / repair (config.needs_calibration).
    inputs_config = options.distill_config(distill, samples=distill_samples, seed=distill_seed, seq_len=distill_seq_len,
                                           max_seconds=distill_seconds, source=distill_source, always=config.needs_calibration,
                                           image_size=distill_image_size, inversion_steps=distill_inversion_steps,
                                           lr=distill_lr if distill_lr is not None else options.WEIGHT_LR)
    distill_config = inputs_config if distill else None
    recipe = options.then_recipe(then, raw_dtype)
    out = render.Output(json_out)
    render.notes.print(f"loading {model} ...")
    loaded = b2s.load_model(model)
    if loaded.model is None:
        raise Big2SmallError(f"{model} is a bare state_dict: folding needs the model's structure (an HF dir or a bundled model)")
    if dry_run:
        plan = FoldPlanReport.of(find_groups(loaded.model, gqa_mode=config.gqa_mode, mlp=mlp, attention=attention))
        render.show_fold_plan(out.console, plan)
        out.json(plan.to_dict())
        return
    task = get_task(loaded.source.task, loaded.source.architecture)
    data = task.calibration_batches() if repair == "data" else None
    calibration = None
    if inputs_config is not None:  # refuse a source that cannot apply before folding, not after
        from big2small.distill import distill_student, resolve_source, synthetic_inputs
        resolve_source(loaded.model, task.name, inputs_config.source)
        if config.needs_calibration:  # all but the inputs distillation holds out
            inputs = synthetic_inputs(loaded.model, task.name, loaded.tokenizer, inputs_config,
                                      example_input=task.example_input(loaded.model))
            calibration = {k: v[:inputs_config.samples - inputs_config.held_out] for k, v in inputs.items()}
    result = fold_model(loaded.model, config, data=data, example_input=task.example_input(loaded.model),
                        calibration=calibration)
    distilled = None
    if distill_config is not None:
        distilled = distill_student(loaded.model, result.model, task=task.name, tokenizer=loaded.tokenizer,
                                    config=distill_config, example_input=task.example_input(loaded.model))
    cm = to_compressed(result, source=loaded.source, recipe=recipe, progress=True, distilled=distilled)
    report = FoldReport(result, CompressReport.of(cm, b2s.save(cm, output, overwrite=overwrite, max_shard_size=shard_bytes)),
                        distilled.to_dict() if distilled else None)
    render.show_fold(out.console, report)
    out.json(report.to_dict())


def distill(
    model: Model,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Artifact directory to write (e.g. smollm2-24.b2s)."),
    drop_layers: int = typer.Option(..., "--drop-layers", help="Transformer blocks to remove (decoder or encoder transformers: model.layers / encoder.layer)."),
    criterion: str = typer.Option("influence", help="Which blocks go: influence (those that change the residual stream least on synthetic inputs; data-free) or even (evenly spaced, first and last kept)."),
    steps: int = typer.Option(100, help="AdamW steps distilling the smaller model from the original on synthetic inputs (0: dropped only)."),
    distill_samples: DistillSamples = 264,
    distill_seed: DistillSeed = 0,
    distill_seq_len: DistillSeqLen = 128,
    distill_seconds: DistillSeconds = None,
    distill_lr: DistillLr = None,
    distill_source: DistillSource = "auto",
    then: Optional[str] = typer.Option(None, "--then", help="METHOD:k=v,...: compress the smaller model's tensors too, e.g. uniform:bits=4,group_size=128."),
    raw_dtype: str = typer.Option("float32", help="Storage of the tensors --then leaves uncompressed (float32 keeps the distilled model exact)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON ('-' = stdout)."),
) -> None:
    """Distil a model into a smaller architecture: the same transformer with fewer layers,
    initialised from the original's own layers and trained to reproduce it on synthetic inputs
    (data-free). Bits per weight count against the original's parameters."""
    _require_output(output, False)
    config = options.distill_config(steps, option="--steps", always=True, samples=distill_samples, seed=distill_seed,
                                    seq_len=distill_seq_len, max_seconds=distill_seconds, source=distill_source,
                                    lr=distill_lr if distill_lr is not None else options.WEIGHT_LR)
    import big2small as b2s
    from big2small.compress import compress as compress_model
    from big2small.distill import resolve_source
    from big2small.distill.smaller import fewer_layers
    from big2small.models.tasks import get_task
    from big2small.recipe import Recipe
    from big2small.reports import CompressReport

    b2s.ensure_writable(output, overwrite=overwrite)
    recipe = options.then_recipe(then, raw_dtype) or Recipe(default=None, raw_dtype="float32", min_numel=0)
    out = render.Output(json_out)
    render.notes.print(f"loading {model} ...")
    loaded = b2s.load_model(model)
    if loaded.model is None:
        raise Big2SmallError(f"{model} is a bare state_dict: distillation needs the model's structure (an HF dir or a bundled model)")
    task = get_task(loaded.source.task, loaded.source.architecture)
    resolve_source(loaded.model, task.name, config.source)
    student, record, report = fewer_layers(loaded.model, drop_layers, criterion=criterion, task=task.name,
                                           tokenizer=loaded.tokenizer, config=config)
    cm = compress_model(student, recipe, source=loaded.source, transforms=[record] + ([report] if report else []),
                        n_parameters=record.parameters_before)
    written = CompressReport.of(cm, b2s.save(cm, output, overwrite=overwrite))
    render.show_distill(out.console, record, written)
    out.json({**written.to_dict(), "drop_layers": record.to_dict()})
