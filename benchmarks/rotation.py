"""Incoherence processing alone: what a random rotation is worth to round-to-nearest and to hyper on
real weights, in weight SQNR (dB, energy-weighted over every compressed tensor), at equal bits.

For each model, every tensor big2small compresses by default is coded by each codec with
rotate = none, input (along each row) and both (rows and columns); the rotation costs a 32-bit
seed per tensor, counted. Also the mean excess kurtosis of the rows (0 for a Gaussian) before and
after rotating, which is what the rotation is meant to remove.

Writes benchmarks/results/rotation/rotation.md and rotation.json.
Run: `python benchmarks/rotation.py [minilm] [efficientnet-lite0] [smollm2]`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

import big2small as b2s
from big2small.generators import GeneratorConfig, rotation
from big2small.layout import MatrixLayout

OUT = Path(__file__).resolve().parent / "results" / "rotation"
CODECS = {
    "uniform RTN 3b g128": {"method": "uniform", "bits": 3, "group_size": 128},
    "uniform RTN 4b g128": {"method": "uniform", "bits": 4, "group_size": 128},
    "hyper 8b/pair g128": {"method": "hyper", "bits": 8, "group_size": 128},
}
MODES = ("none", "input", "both")


def excess_kurtosis(matrices: list[torch.Tensor]) -> float:
    """Mean over rows of E[(x - mean)^4] / var^2 - 3 (float64; constant rows, e.g. pruned
    channels, have no kurtosis and are left out)."""
    total, rows = 0.0, 0
    for m in matrices:
        centred = m.double() - m.double().mean(1, keepdim=True)
        var = centred.pow(2).mean(1)
        keep = var > 0
        total += float((centred[keep].pow(4).mean(1) / var[keep].pow(2) - 3).sum())
        rows += int(keep.sum())
    return total / rows


def measure(model_name: str) -> dict:
    loaded = b2s.load_model(model_name)
    original = {k: v.detach().float() for k, v in loaded.weights.state_dict().items()} \
        if loaded.model is not None else loaded.state_dict
    result = {"model": model_name, "rows": []}
    for label, spec in CODECS.items():
        for mode in MODES:
            cfg = GeneratorConfig.from_dict({**spec, "rotate": mode})
            start = time.perf_counter()
            cm = b2s.compress(loaded, b2s.Recipe(default=cfg), progress=False)
            seconds = time.perf_counter() - start
            err = cm.weight_error(original)
            size = cm.size()
            result["rows"].append({"codec": label, "rotate": mode, "sqnr_db": err.total.sqnr_db,
                                   "bpw_compressed": size.bpw_scope, "encode_s": seconds})
            print(f"{model_name} {label:22s} rotate={mode:5s} SQNR {err.total.sqnr_db:6.2f} dB "
                  f"bpw {size.bpw_scope:.3f} {seconds:.0f} s", flush=True)
    result["excess_kurtosis"] = kurtosis_before_after(cm, original)
    return result


def kurtosis_before_after(cm, original: dict[str, torch.Tensor]) -> dict[str, float]:
    """Rows' mean excess kurtosis of the compressed tensors, before and after an input rotation."""
    names = [n for n, e in cm.tensors.items() if e.compressed]
    plain = [cm.tensors[n].layout.to_matrix(original[n]) for n in names]
    cfg = GeneratorConfig.from_dict({**CODECS["uniform RTN 3b g128"], "rotate": "input"})
    rotated = [rotation.rotate(m, cfg, MatrixLayout(tuple(m.shape)), 0) for m in plain]
    return {"none": excess_kurtosis(plain), "input": excess_kurtosis(rotated)}


def write(results: list[dict]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "rotation.json").write_text(json.dumps(results, indent=1))
    lines = ["# Rotation alone: weight SQNR (dB) with and without incoherence processing", ""]
    for res in results:
        k = res["excess_kurtosis"]
        lines += [f"## {res['model']}", "",
                  f"Mean excess kurtosis of the rows: {k['none']:.2f} before rotation, {k['input']:.2f} after "
                  "(0 for a Gaussian).", "",
                  "| codec | bits per compressed weight | none | input | both | gain (best) |", "|---|---|---|---|---|---|"]
        for label in CODECS:
            rows = {r["rotate"]: r for r in res["rows"] if r["codec"] == label}
            gain = max(rows["input"]["sqnr_db"], rows["both"]["sqnr_db"]) - rows["none"]["sqnr_db"]
            lines.append(f"| {label} | {rows['input']['bpw_compressed']:.3f} | {rows['none']['sqnr_db']:.2f} | "
                         f"{rows['input']['sqnr_db']:.2f} | {rows['both']['sqnr_db']:.2f} | {gain:+.2f} dB |")
        lines.append("")
    lines += ["Protocol: every tensor big2small compresses by default (Linear/Conv weights of at least 4096 "
              "elements; embeddings kept), energy-weighted SQNR over all of them; bits per compressed weight "
              "include the rotation's 32-bit seed per tensor (the 'none' rows have 32 bits less per tensor). "
              "Data-free: no calibration data.",
              f"Reproduce: `python benchmarks/rotation.py {' '.join(r['model'] for r in results)}`."]
    (OUT / "rotation.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    results = []
    for model_name in sys.argv[1:] or ["minilm", "efficientnet-lite0", "smollm2"]:
        results.append(measure(model_name))
        write(results)  # after each model, so a long run keeps what it measured


if __name__ == "__main__":
    main()
