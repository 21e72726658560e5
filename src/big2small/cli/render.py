"""How the command line shows the library's reports (big2small.reports): rich tables, lines of
text, and JSON. Nothing here measures anything; it only formats what a report holds.

Tables go to stdout, unless `--json -` claims stdout for JSON: then they go to stderr, so that
stdout parses. Progress bars and notes ("loading ...") always go to stderr. Piped into a file or
another program, nothing wraps at 80 columns: tables take the width they need. Tensor and group
names are never cut (on a narrow terminal they fold onto the next line).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from big2small.bench import BenchResult
    from big2small.reports import (
        ArtifactSize, CompressReport, EvalReport, FoldPlanReport, FoldReport, InspectReport, PlanReport, VerifyReport,
    )
    from big2small.selfcompress.sweep import SweepPoint

# Width of a console that is not a terminal (a pipe, a file): wide enough that nothing wraps.
PIPE_WIDTH = 100_000


def make_console(*, stderr: bool) -> Console:
    """A console on stdout or stderr; when that is not a terminal, one that never wraps (rich would
    wrap at 80 columns). COLUMNS, when set, still decides."""
    c = Console(stderr=stderr)
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c = Console(stderr=stderr, width=PIPE_WIDTH)
    return c


def name_column(table: Table, header: str) -> None:
    """A column of names (tensors, groups): folded onto more lines when narrow, never cut."""
    table.add_column(header, overflow="fold")


notes = make_console(stderr=True)  # progress notes and errors


class Output:
    """Where one command's results go: its report as tables on `console`, and as JSON to
    `json_path` ('-' = stdout, then `console` is stderr; None = no JSON)."""

    def __init__(self, json_path: Path | None) -> None:
        self.json_path = json_path
        self.console = make_console(stderr=json_path is not None and str(json_path) == "-")

    def json(self, data: dict[str, Any]) -> None:
        if self.json_path is None:
            return
        text = json.dumps(data, indent=2, default=str) + "\n"
        if str(self.json_path) == "-":
            sys.stdout.write(text)
        else:
            self.json_path.write_text(text)


def error(message: str) -> None:
    """A user error, as one line on stderr."""
    notes.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def format_bytes(n: float) -> str:
    """`n` bytes in B, KiB, MiB or GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


def summary_line(counts: dict[str, int]) -> str:
    """'3 uniform; 2 kept: too small' from tensors per way of storing them."""
    return "; ".join(f"{n} {k}" for k, n in counts.items())


def size_table(stored: ArtifactSize) -> Table:
    size, on_disk = stored.size, stored.bytes_on_disk
    t = Table(title="size (every stored bit counted)", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("parameters (original, tied once)", f"{size.n_parameters:,}")
    t.add_row("compressed weights", f"{size.n_compressed:,} ({size.n_compressed / max(size.n_parameters, 1):.1%})")
    t.add_row("bits per weight, whole model (bpw_all)", f"{size.bpw_all:.4f}")
    t.add_row("bits per weight, compressed tensors (bpw_scope)", f"{size.bpw_scope:.4f}")
    t.add_row("ratio vs fp32 / vs fp16", f"{size.ratio_vs_fp32:.2f}x / {size.ratio_vs_fp16:.2f}x")
    t.add_row("stored bits", f"{size.bits_total:,} ({format_bytes(size.bits_total / 8)})")
    for k, v in sorted(size.bits_by_item.items()):
        t.add_row(f"  {k}", f"{v:,} bits ({v / max(size.bits_total, 1):.1%})")
    t.add_row("bytes on disk: tensor file(s)", f"{on_disk.tensor_file_bytes:,}")
    t.add_row("bytes on disk: manifest.json", f"{on_disk.manifest_bytes:,}")
    t.add_row("bytes on disk: source/ (config, tokenizer)", f"{on_disk.source_bytes:,}")
    t.add_row("tensor file minus stored bits", f"{stored.tensor_file_overhead_bytes:,.0f} B (safetensors header, byte rounding)")
    return t


def show_plan(console: Console, plan: PlanReport) -> None:
    t = Table(title="pre-flight: every tensor and what happens to it", show_lines=False)
    name_column(t, "tensor")
    for col in ("shape", "kind", "stored as", "why"):
        t.add_column(col)
    for row in plan.rows:
        options = {k: v for k, v in row.config.items() if k not in ("method", "version")}
        stored = row.config["method"] + ("(" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")" if options else "")
        name = row.name + (f" (= {', '.join(row.aliases)})" if row.aliases else "")
        cells = (name, "x".join(map(str, row.shape)) or "scalar", row.kind, stored,
                 row.reason + (f" ({row.detail})" if row.detail else "")
                 + (" [sized to target]" if row.sized_to_target else ""))
        t.add_row(*map(escape, cells))  # names and reasons are text, not rich markup
    console.print(t)
    console.print(summary_line(plan.summary))
    from big2small.reports import ratio_text

    bound = "" if plan.exact else f"at most (the size of {len(plan.data_dependent)} tensor(s) follows their weights) "
    console.print(f"planned: {bound}{ratio_text(plan.bpw_all)}", highlight=False)
    show_warnings(plan.warnings)


def show_warnings(warnings: list[str]) -> None:
    for w in warnings:
        notes.print(f"[yellow]warning:[/yellow] {escape(w)}", highlight=False, soft_wrap=True)


def distill_rows(d: dict | None) -> list[tuple[str, str]]:
    """(label, value) rows of a distill record (None: no distillation, no rows)."""
    if d is None:
        return []
    rows = [("distilled (data-free)", f"{d.get('trained', 'weights')}: {d['steps']} steps, {d['seconds']:.1f} s "
                                      f"(stopped by {d['stopped_by']})")]
    if d["held_out_before"] is not None:
        rows.append(("held-out distillation loss", f"{d['held_out_before']:.4g} -> {d['held_out_after']:.4g}"))
    return rows


def show_compress(console: Console, report: CompressReport) -> None:
    from big2small.reports import ratio_text

    notes.print(summary_line(report.stored_as))
    for label, value in distill_rows(report.distilled):
        notes.print(f"{label}: {value}")
    console.print(size_table(report.stored))
    console.print(f"wrote {report.artifact}: {ratio_text(report.stored.size.bpw_all)}", highlight=False)
    show_warnings(report.warnings)


def show_distill(console: Console, record: Any, report: CompressReport) -> None:
    """A smaller model distilled from its original (`distill --drop-layers`) and written."""
    notes.print(f"kept {len(record.kept)} of {record.layers_before} layers ({record.criterion}): "
                f"{', '.join(map(str, record.kept))}; parameters {record.parameters_before:,} -> {record.parameters_after:,}")
    show_compress(console, report)


def show_written_file(console: Console, path: Path) -> None:
    """A file written, or a directory of files, with its size."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    what = f"{len(files)} file{'s' if len(files) != 1 else ''}, " if path.is_dir() else ""
    console.print(f"wrote {path} ({what}{format_bytes(sum(f.stat().st_size for f in files))})")


def show_inspect(console: Console, report: InspectReport, *, tensors: bool) -> None:
    src = report.source
    console.print(f"[bold]{escape(str(report.artifact))}[/bold]: big2small format v{report.format_version}, written by "
                  f"{report.library_version}; source {src.get('kind', '?')} {src.get('name', '')} "
                  f"({src.get('architecture') or src.get('module_class') or ''})")
    console.print("tensors: " + ", ".join(f"{n} {m}" for m, n in report.methods.items()))
    console.print(size_table(report.stored))
    if tensors:
        t = Table(title="stored tensors")
        name_column(t, "tensor")
        for col in ("shape", "method", "bits", "bits/weight"):
            t.add_column(col)
        for row in report.tensors:
            t.add_row(escape(row.name), "x".join(map(str, row.shape)) or "scalar", row.method, f"{row.bits:,}",
                      f"{row.bits_per_weight:.3f}")
        console.print(t)


def show_verify(console: Console, report: VerifyReport) -> None:
    console.print(f"integrity: ok ({report.tensors_checked} tensors, every array matches its sha256); decoded: ok")
    if report.outcome == "architecture changed":
        console.print(f"the architecture was changed ({', '.join(report.transforms)}): "
                      "weight error against the original is not defined")
    elif report.outcome == "no original model":
        console.print("no original model given (--model): weight error not measured")
    elif report.outcome == "nothing compressed":
        console.print("no compressed tensors: every tensor is stored raw")
    else:
        t = Table(title=f"weight error vs {escape(str(report.model))} (compressed tensors)")
        name_column(t, "tensor")
        for col in ("numel", "relative error", "SQNR dB"):
            t.add_column(col)
        for row in report.weight_error.table():
            t.add_row(escape(row["name"]), f"{row['numel']:,}", f"{row['rel_error']:.4g}", f"{row['sqnr_db']:.2f}")
        console.print(t)
        console.print(report.weight_error.describe())


def show_eval(console: Console, report: EvalReport) -> None:
    """The figures beside the original's (when there is one), then each figure's protocol."""
    comparisons = report.comparisons()
    if comparisons:
        t = Table(title=escape(f"{report.target} vs the original, {report.reference}"))
        t.add_column("metric", overflow="fold")
        for col in ("original", "this model", "difference"):
            t.add_column(col, justify="right", overflow="fold")
        for c in comparisons:
            verdict = "same" if c.difference == 0 else "better" if (c.difference > 0) == c.higher_is_better else "worse"
            share = "" if c.relative is None else f"{100 * c.relative:+.2f}%, "
            t.add_row(c.metric, f"{c.original:.5g}", f"{c.value:.5g}", f"{c.difference:+.4g} ({share}{verdict})")
        console.print(t)
    for m in report.metrics:
        console.print(escape(m.text))
    if report.original is not None:
        console.print(escape(f"original {report.reference}: ") + (
            "figures from the cache (same weights and protocol as an earlier run; --no-cache measures again)"
            if report.original_cached else "measured now, under the same protocol (cached for the next run)"))
    elif report.original_note is not None:
        notes.print(escape(report.original_note))


def show_bench(console: Console, result: BenchResult, out_dir: Path) -> None:
    console.print(result.markdown())
    console.print(f"wrote {out_dir}/")


def show_selfcompress(console: Console, points: list[SweepPoint], out_dir: Path | None) -> None:
    t = Table(title="self-compression on Fashion-MNIST (test accuracy of the exported, reloaded network)")
    for col in ("network", "trained on", "test accuracy", "bits left vs fp32", "weights left", "stored", "train time"):
        t.add_column(col)
    for p in points:
        name = ("fp32 teacher" if p.inputs == "given teacher" else "fp32 reference") if p.gamma is None else f"gamma {p.gamma:g}"
        t.add_row(name, escape(p.inputs), f"{100 * p.test_accuracy:.2f}%", f"{100 * p.bits_share:.2f}%",
                  f"{100 * p.weights_share:.1f}%", format_bytes(p.stored_bits / 8), f"{p.train_seconds:.0f} s")
    console.print(t)
    if out_dir is not None:
        console.print(f"wrote {out_dir}/")


def show_fold_plan(console: Console, plan: FoldPlanReport) -> None:
    t = Table(title="coupling groups")
    name_column(t, "group")
    for col in ("kind", "units", "foldable"):
        t.add_column(col)
    for g in plan.groups:
        t.add_row(escape(g.name), g.kind, str(g.units), "yes" if g.reason is None else escape(f"no: {g.reason}"))
    console.print(t)
    for name, why in plan.not_folded.items():
        console.print(f"not folded: {escape(name)}: {escape(why)}")


def show_fold(console: Console, report: FoldReport) -> None:
    result, config = report.result, report.result.config
    title = ("folded" if config.selection == "fold" else f"pruned ({config.selection})") + f", repair {config.repair}"
    t = Table(title=title + ("" if result.data_free else " (uses real data)"), show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("parameters before / after", f"{result.parameters_before:,} / {result.parameters_after:,}")
    t.add_row("parameters removed", f"{result.sparsity:.1%}")
    if report.macs_removed is not None:
        t.add_row("MACs per example before / after", f"{result.macs_before:,} / {result.macs_after:,} "
                  f"({report.macs_removed:.1%} fewer)")
    t.add_row("groups folded", f"{report.groups_folded} of {len(result.groups)}"
              + (f" (uniform r = {result.ratio:.3f})" if result.ratio is not None else " (widths by merge cost)"))
    t.add_row("time to fold", f"{result.seconds:.1f} s")
    for row in distill_rows(report.distilled):
        t.add_row(*row)
    console.print(t)
    for name, why in result.unfolded.items():
        notes.print(f"not folded: {escape(name)}: {escape(why)}")
    console.print(size_table(report.written.stored))
    console.print(f"wrote {report.written.artifact}")
