"""Several methods and sizes on one model, in one run: a table and a Pareto plot.

Every row is measured here: compressed with the library, restored into the model, evaluated with
the same protocol as the uncompressed reference. Low-rank and pruning are sized to each uniform
row's exact bits per weight (the whole model, every stored bit), so rows compare at matched size.
"""

from __future__ import annotations

import copy
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from big2small.compress import compress
from big2small.errors import Big2SmallError
from big2small.evaluate.suite import EvalSettings, MetricRow
from big2small.models.load import load_model
from big2small.models.originals import original_figures
from big2small.models.tasks import evaluate
from big2small.progress import progress_bar
from big2small.specs import parse_method_spec

UNIFORM_SWEEP = tuple(
    f"uniform:bits={b},group_size={g}" for b in (8, 4, 3, 2) for g in (128, 64)
)
# Hyper-compression (ours) at about 4, 3 and 2 code bits per weight (index width 8, 6, 4 per pair).
HYPER_SWEEP = tuple(f"hyper:bits={b},group_size=128" for b in (8, 6, 4))
# `big2small bench`'s sweep: uniform RTN at two group sizes and hyper-compression.
DEFAULT_SWEEP = UNIFORM_SWEEP + HYPER_SWEEP

# Known traps, printed under a table when they apply (see ASSETS.md).
CAVEATS = {
    "smollm2": "SmolLM2's weights were dequantised from 4-bit group-32 asymmetric GGUF blocks, so 4-bit asymmetric "
               "grids whose groups align with those blocks (group size 32) reproduce them almost exactly; "
               "that setting is excluded, and 4-bit rows at groups 64/128 still benefit partly.",
}


@dataclass
class BenchRow:
    method: str
    spec: str
    bpw_all: float | None
    bpw_scope: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    sqnr_db: float | None = None
    compress_seconds: float | None = None
    note: str = ""


@dataclass
class BenchResult:
    model: str
    task: str
    rows: list[BenchRow]
    protocols: dict[str, dict[str, Any]]
    environment: dict[str, Any]
    command: str = ""

    def metric_names(self) -> list[str]:
        names: list[str] = []
        for r in self.rows:
            names += [m for m in r.metrics if m not in names]
        return names

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "rows": [asdict(r) for r in self.rows],
                "protocols": self.protocols, "environment": self.environment, "command": self.command}

    def markdown(self) -> str:
        names = self.metric_names()
        head = ["method", "config", "bpw (all)", "bpw (compressed)", *names, "weight SQNR dB", "compress s", "note"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

        def f(x, nd=3):
            if x is None:
                return "-"
            return f"{x:.3g}" if abs(x) >= 1e4 else f"{x:.{nd}f}"

        for r in self.rows:
            cells = [r.method, r.spec, f(r.bpw_all), f(r.bpw_scope), *[f(r.metrics.get(m), 4) for m in names],
                     f(r.sqnr_db, 2), f(r.compress_seconds, 2), r.note]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines.append("Protocol:")
        for name, proto in self.protocols.items():
            lines.append(f"- {name}: " + ", ".join(f"{k}={v}" for k, v in proto.items()))
        lines.append("- bpw (all): every stored bit (codes, scales, zero-points, positions, headers, raw tensors kept in "
                     "fp16) over the original parameter count, tied tensors once; bpw (compressed): the compressed "
                     "tensors' bits over their own element count. Data-free: no calibration data, no fine-tuning.")
        env = self.environment
        lines.append(f"- machine: {env.get('machine')}, {env.get('threads')} threads, torch {env.get('torch')}")
        if self.command:
            lines.append(f"- reproduce: `{self.command}`")
        return "\n".join(lines) + "\n"


def _environment() -> dict[str, Any]:
    return {"machine": f"{platform.system()} {platform.machine()} ({platform.processor() or 'cpu'})",
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}


def _measure(loaded, spec: str, settings: EvalSettings, reference) -> tuple[BenchRow, list[MetricRow]]:
    method, options = parse_method_spec(spec)
    t0 = time.perf_counter()
    cm = compress(loaded, method, progress=False, **options)
    seconds = time.perf_counter() - t0
    model = cm.apply_to(copy.deepcopy(loaded.model)).eval()
    err = cm.weight_error(loaded.model.state_dict())
    metrics = evaluate(model, loaded.source.task, loaded.tokenizer, reference=reference, settings=settings)
    size = cm.size()
    configs = sorted({json.dumps(asdict(e.config)) for e in cm.plan if e.budgeted})
    note = ("sized: " + "; ".join(configs)) if len(configs) == 1 else (f"sized per tensor ({len(configs)} settings)" if configs else "")
    row = BenchRow(method, spec, size.bpw_all, size.bpw_scope, {m.metric: m.value for m in metrics},
                   err.total.sqnr_db if err else None, seconds, note)
    del model
    return row, metrics


def measure_decoded(loaded, scaffold, decoded: dict[str, torch.Tensor], bits: int, reference,
                    settings: EvalSettings) -> tuple[float, float, dict[str, float], float | None]:
    """Evaluate the model with its compressed tensors replaced by `decoded` (made elsewhere, e.g. by
    an external baseline), everything else as `scaffold` (a CompressedModel of the same tensors)
    stores it.

    bits: the stored bits of the decoded tensors. Returns (bits per weight over the whole model,
    counting the scaffold's raw tensors; bits per compressed weight; the task's metrics; the
    weight SQNR in dB over the compressed tensors, or None when nothing is compressed).
    """
    names = [n for n, e in scaffold.tensors.items() if e.compressed]
    state = scaffold.state_dict()
    state.update({n: decoded[n] for n in names})
    size = scaffold.size()
    model = copy.deepcopy(loaded.model)
    model.load_state_dict(state, strict=False)
    metrics = evaluate(model.eval(), loaded.source.task, loaded.tokenizer, reference=reference, settings=settings)
    err = scaffold.weight_error(loaded.model.state_dict(), decoded={n: decoded[n] for n in names})
    del model
    return ((bits + size.bits_raw) / size.n_parameters, bits / size.n_compressed, {m.metric: m.value for m in metrics},
            err.total.sqnr_db if err else None)


def run_bench(model_spec: str, configs: list[str], *, matched: bool = True, match_only: list[str] | None = None,
              settings: EvalSettings | None = None, out_dir: Path | None = None, command: str = "") -> BenchResult:
    """Run every config on `model_spec` and the matched-size baselines; write table, JSON and plot.

    matched: run lowrank and prune sized to each uniform row's bits per weight (or, with
    `match_only`, to those rows' only).
    """
    settings = settings or EvalSettings()
    loaded = load_model(model_spec)
    if loaded.model is None:
        raise Big2SmallError("bench needs a runnable model, not a bare state_dict")
    task = loaded.source.task
    original = original_figures(loaded.model, task, loaded.tokenizer, settings)  # cached after the first run
    reference, base_metrics = original.reference, original.metrics
    protocols = {m.metric: m.protocol for m in base_metrics}
    rows = [BenchRow("fp32", "original", 32.0, 32.0, {m.metric: m.value for m in base_metrics}, None, None, "reference")]
    quiet = EvalSettings(**{**asdict(settings), "progress": False})
    todo = list(configs)
    to_match = [s for s in todo if s.startswith("uniform") and (match_only is None or s in match_only)] if matched else []
    with progress_bar(f"bench {model_spec}", total=len(todo) + 2 * len(to_match)) as advance:
        for spec in todo:
            row, _ = _measure(loaded, spec, quiet, reference)
            rows.append(row)
            advance(1)
            if spec in to_match:
                for other in ("lowrank", "prune"):
                    try:
                        r, _ = _measure(loaded, f"{other}:bpw={row.bpw_all:.6f}", quiet, reference)
                        r.note = (f"matched to {spec}; " + r.note).strip("; ")
                    except Big2SmallError as exc:
                        r = BenchRow(other, f"bpw={row.bpw_all:.3f}", None, None, note=f"impossible: {exc}")
                    rows.append(r)
                    advance(1)
    result = BenchResult(model_spec, task, rows, protocols, _environment(), command)
    if out_dir is not None:
        write_outputs(result, Path(out_dir))
    return result


def write_outputs(result: BenchResult, out_dir: Path) -> None:
    """bench.md (table), bench.json (rows and protocols), pareto.png (quality vs bits per weight)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = f"# {result.model}: methods at matched size\n\n" + result.markdown()
    caveat = CAVEATS.get(result.model)
    if caveat:
        md += f"\nCaveat: {caveat}\n"
    (out_dir / "bench.md").write_text(md)
    (out_dir / "bench.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    plot_pareto(result, out_dir / "pareto.png")


def plot_pareto(result: BenchResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in result.metric_names()]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
    ref = next(r for r in result.rows if r.method == "fp32")
    for ax, metric in zip(axes[0], names):
        by_method: dict[str, list[tuple[float, float]]] = {}
        for r in result.rows:
            if r.method != "fp32" and r.bpw_all is not None and metric in r.metrics:
                by_method.setdefault(r.method, []).append((r.bpw_all, r.metrics[metric]))
        # Collapsed rows (perplexity in the millions) would flatten the region that matters:
        # cap the axis at 20x the reference and mark what lies beyond it at the edge.
        cap = 20 * ref.metrics[metric] if metric == "perplexity" else None
        for method, pts in sorted(by_method.items()):
            pts.sort()
            xs = [p[0] for p in pts]
            ys = [min(p[1], cap) if cap else p[1] for p in pts]
            line = ax.plot(xs, ys, "o-", label=method, alpha=0.85)[0]
            off = [(x, y) for (x, y), (_, v) in zip(zip(xs, ys), pts) if cap and v > cap]
            if off:
                ax.plot([o[0] for o in off], [o[1] for o in off], "^", ms=10, color=line.get_color())
        if cap:
            ax.set_ylim(bottom=0.8 * ref.metrics[metric], top=cap * 1.15)
            ax.text(0.99, 0.02, f"▲ off scale (> {cap:.0f})", transform=ax.transAxes, ha="right", va="bottom", fontsize=8)
        ax.axhline(ref.metrics[metric], color="k", ls="--", lw=1, label="fp32")
        ax.set_xlabel("bits per weight (whole model, every stored bit)")
        ax.set_ylabel(metric)
        if metric == "perplexity":
            ax.set_yscale("log")
        ax.set_title(f"{result.model}: {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="center right" if metric == "perplexity" else "best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
