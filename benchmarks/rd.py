"""Distance to the rate-distortion bound on an i.i.d. Gaussian matrix, every stored bit counted.

For a Gaussian source of variance sigma^2 no code of R bits per weight does better than
D(R) = sigma^2 2^(-2R), i.e. an SQNR of 6.02 R dB. Each row here encodes the same 4096 x 4096
Gaussian matrix, divides all its stored bits (codes, scales, zero-points, seeds, header) by the
weight count to get R, and reports how far its SQNR sits below 6.02 R. Also: encoding seconds on
this machine and decoding throughput against a plain copy of the dense fp32 matrix.

Writes benchmarks/results/rd/rd.md, rd.json and rd.png. Run: `python benchmarks/rd.py [--size N]`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from big2small.generators import GeneratorConfig, decode, generator_for
from big2small.generators.trellis_codes import SHIPPED_STATE_BITS, is_shipped

OUT = Path(__file__).resolve().parent / "results" / "rd"
RATES = (2, 3, 4)


def rows_for(rate: int) -> list[tuple[str, dict]]:
    return [
        ("uniform RTN g128", {"method": "uniform", "bits": rate, "group_size": 128}),
        ("uniform RTN g64", {"method": "uniform", "bits": rate, "group_size": 64}),
        ("hyper (2-D codebook) g128", {"method": "hyper", "bits": 2 * rate, "group_size": 128}),
        *[(f"trellis L={L}", {"method": "trellis", "bits": rate, "state_bits": L, "rotate": "none"})
          for L in SHIPPED_STATE_BITS if is_shipped(rate, L)],
    ]


def _timed(fn, repeats: int = 1):
    best, out = math.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def measure(size: int, only: str | None = None, earlier: list[dict] | None = None) -> list[dict]:
    """Every row on one Gaussian matrix; also records the machine's load average (other jobs
    slow encoding down, so times measured on a busy machine are upper bounds). With `only`, rows
    whose label lacks that text are taken from `earlier` (the same size's rd.json) where present."""
    w = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    _, copy_s = _timed(lambda: w.clone(), repeats=5)
    kept = {(r["rate"], r["label"]): r for r in earlier or []}
    results = []
    for rate in RATES:
        for label, spec in rows_for(rate):
            if only is not None and only not in label and (rate, label) in kept:
                results.append(kept[(rate, label)])
                continue
            cfg = GeneratorConfig.from_dict(spec)
            enc, encode_s = _timed(lambda: generator_for(cfg).encode(w))
            out, decode_s = _timed(lambda: decode(enc), repeats=3)
            bpw = enc.total_bits / w.numel()
            sqnr = 10 * math.log10(float(w.double().pow(2).sum() / (w.double() - out.double()).pow(2).sum()))
            results.append({"rate": rate, "label": label, "config": spec, "bpw": bpw, "sqnr_db": sqnr,
                            "load_average": os.getloadavg()[0],
                            "gap_db": 6.0206 * bpw - sqnr, "encode_s": encode_s, "decode_s": decode_s,
                            "decode_vs_copy": copy_s / decode_s})
            r = results[-1]
            print(f"{label:28s} R={bpw:.3f} SQNR {sqnr:6.2f} dB  gap {r['gap_db']:.2f} dB  "
                  f"encode {encode_s:.1f} s  decode {100 * r['decode_vs_copy']:.0f}% of a copy", flush=True)
    return results


def _load_note(results: list[dict]) -> str:
    loads = [r["load_average"] for r in results if "load_average" in r]
    notes = []
    if len(loads) < len(results):
        notes.append("Rows without a recorded load were measured on a machine shared with other jobs (`uptime` "
                     "showed a load average of 9-12 on its 2 cores): their times are upper bounds, several times "
                     "what an idle machine takes.")
    if loads:
        notes.append(f"1-minute load average while the other rows ran: {min(loads):.1f}-{max(loads):.1f} on 2 cores "
                     "(above 2, other jobs shared the CPU and the times are upper bounds).")
    return " ".join(notes)


def write(results: list[dict], size: int) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "rd.json").write_text(json.dumps({"size": size, "rows": results}, indent=1))
    lines = [f"# Gap to the Gaussian rate-distortion bound ({size} x {size}, every stored bit counted)", "",
             "| code bits | codec | bits per weight | SQNR (dB) | gap to D(R) (dB) | encode (s) | decode / dense copy |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rate']} | {r['label']} | {r['bpw']:.3f} | {r['sqnr_db']:.2f} | **{r['gap_db']:.2f}** | "
                     f"{r['encode_s']:.1f} | {100 * r['decode_vs_copy']:.0f}% |")
    lines += ["", f"Protocol: one N(0, 1) matrix ({size} x {size}, seed 0) encoded by every row; bits per weight ="
              " all stored bits (header included) over the weights; gap = 6.02 R - SQNR. Trellis rows are not"
              " rotated (a Gaussian matrix needs no incoherence processing). Times on this machine (2 CPU"
              " cores), best of 1 encode and 3 decodes; a dense copy is `clone()` of the fp32 matrix."
              f" {_load_note(results)}",
              f"Reproduce: `python benchmarks/rd.py --size {size}`."]
    (OUT / "rd.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    r_axis = torch.linspace(1.9, 4.4, 50)
    ax.plot(r_axis, 6.0206 * r_axis, "k-", label="D(R) bound")
    for label in dict.fromkeys(r["label"] for r in results):
        pts = [(r["bpw"], r["sqnr_db"]) for r in results if r["label"] == label]
        ax.plot(*zip(*pts), "o--", label=label)
    ax.set_xlabel("bits per weight (all stored bits)")
    ax.set_ylabel("SQNR (dB)")
    ax.set_title(f"Gaussian {size}x{size}: codecs against the rate-distortion bound")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT / "rd.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--report", action="store_true", help="only rewrite the table and plot from rd.json")
    parser.add_argument("--only", default=None,
                        help="measure only rows whose label contains this text (e.g. 'L=14'); keep rd.json's others")
    args = parser.parse_args()
    saved = json.loads((OUT / "rd.json").read_text()) if (OUT / "rd.json").exists() else {"size": None, "rows": []}
    if args.report:
        write(saved["rows"], saved["size"])
    else:
        earlier = saved["rows"] if saved["size"] == args.size else []
        write(measure(args.size, args.only, earlier), args.size)


if __name__ == "__main__":
    main()
