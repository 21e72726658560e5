"""Inference benchmark: SmolLM2-135M at batch 1 with compact weights resident.

Two measurements, each interleaved (every repeat runs every variant once, in turn; the median of
the repeats is reported) because the machine is shared and its load drifts; each is reported in
wall-clock and in CPU seconds of the measuring process (time.process_time), the figure that
compares rows under load:

1. Decode throughput, over every compressed Linear weight of each artifact: a plain memory copy of
   the dense fp32 weights (torch copy_ into a buffer), the codec's own decode (what
   `restore(on_the_fly=True)` runs at every forward), the compiled decode (big2small.kernels,
   fp32 matrix written), the fused product at batch 1 (y = W x from the codes; weights/s counts
   the weights it multiplies), the same through `CompactLinear.forward` (the kernel plus the
   layer's per-call Python, what generation pays per layer and token) and the dense fp32 product
   x W^T at batch 1 in PyTorch. The kernels' arguments are prepared once per layer, as the layer
   does. GB/s are of dense fp32 (4 bytes per weight), produced or, for products, multiplied.
2. Generation: a 128-token prompt (the Wikipedia extract), then 128 tokens generated greedily with
   the KV cache, each variant in a fresh process (its resident memory is that process's): dense
   fp32 PyTorch; today's on-the-fly restore (every weight decoded at every forward: only 8
   generated tokens, since it is that slow; tokens per second are per token either way); the fused
   restore (`restore(on_the_fly=True, fused=True)`); llama.cpp (llama-cpp-python) on our GGUF
   export of the uniform artifact (Q4_0, bit for bit) and on llama.cpp's own Q4_K_M of the
   original. All with the same number of threads (torch, numba and llama.cpp; `--threads`, 1 by
   default: on a shared machine under load, 2-thread parallel regions mostly wait for a
   descheduled partner, which made every variant several times slower, ours most).

Artifacts (default scope: the token embedding, tied to the LM head, stays fp16 in the artifact and
is restored to fp32 in PyTorch): uniform 4-bit group-32 symmetric, hyper 8-bit index per pair
(about 4 bits per weight), trellis 4 bits per weight (state_bits 10, rotated inputs).

Writes benchmarks/results/inference/{inference.json, inference.md} (with `--threads N` other than 1:
inference-Nthreads.{json,md}). Run: `python benchmarks/inference.py [--repeats N] [--threads N]`; `--decode-only` measures the decode
throughput again into the existing inference.json (needs `pip install big2small[export]` for llama.cpp);
artifacts and GGUFs are kept in $BIG2SMALL_BENCH_DIR (default /tmp/big2small-inference-bench).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import big2small as b2s
from big2small.compact import CompactLinear
from big2small.generators import generator_for
from big2small.kernels import kernel_for

OUT = Path(__file__).resolve().parent / "results" / "inference"
WORK = Path(os.environ.get("BIG2SMALL_BENCH_DIR", "/tmp/big2small-inference-bench"))
PROMPT, NEW, NEW_ON_THE_FLY = 128, 128, 8
ARTIFACTS = {  # file stem -> (label, recipe)
    "uniform-4-bit-g32-sym": ("uniform 4-bit g32 sym", dict(method="uniform", bits=4, group_size=32, symmetric=True)),
    "hyper-8-bit-index": ("hyper 8-bit index (~4 bpw)", dict(method="hyper", bits=8)),
    "trellis-4-bit-l10": ("trellis 4-bit (L=10)", dict(method="trellis", bits=4, state_bits=10)),
}
GGUFS = {"llama.cpp Q4_0 (our export of uniform 4-bit g32 sym)": "uniform-4-bit-g32-sym.gguf",
         "llama.cpp Q4_K_M (llama.cpp's quantiser on the original)": "original-q4_k_m.gguf"}


# --- preparation ---------------------------------------------------------------------------------

def prepare() -> None:
    """Artifacts and GGUF files, made once (reused from WORK)."""
    WORK.mkdir(parents=True, exist_ok=True)
    loaded = None
    for stem, (_, options) in ARTIFACTS.items():
        if not (WORK / f"{stem}.b2s").exists():
            loaded = loaded or b2s.load_model("smollm2")
            options = dict(options)
            b2s.save(b2s.compress(loaded, b2s.make_recipe(options.pop("method"), **options), progress=False),
                     WORK / f"{stem}.b2s")
    if not (WORK / "uniform-4-bit-g32-sym.gguf").exists():
        b2s.export(WORK / "uniform-4-bit-g32-sym.b2s", "gguf", WORK / "uniform-4-bit-g32-sym.gguf")
    if not (WORK / "original-q4_k_m.gguf").exists():
        from big2small.export.llama_cpp import quantize

        loaded = loaded or b2s.load_model("smollm2")
        original = WORK / "original-f32.b2s"
        b2s.save(b2s.compress(loaded, b2s.Recipe(default=None, raw_dtype="float32"), progress=False), original, overwrite=True)
        b2s.export(original, "gguf", WORK / "original-f32.gguf", overwrite=True)
        quantize(WORK / "original-f32.gguf", WORK / "original-q4_k_m.gguf", "Q4_K_M")


def prompt_ids() -> list[int]:
    from big2small.evaluate import data
    from big2small.models.load import load_tokenizer_from

    tokenizer = load_tokenizer_from(b2s.load(WORK / "uniform-4-bit-g32-sym.b2s").source)
    return tokenizer(data.wiki_text()[:20000], add_special_tokens=False)["input_ids"][:PROMPT]


# --- 1. decode throughput ------------------------------------------------------------------------

def _seconds(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn()."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


@torch.no_grad()
def decode_throughput(stem: str, repeats: int) -> dict:
    """Wall and CPU seconds (medians over interleaved repeats) of each way to produce or use every
    compressed Linear weight."""
    cm = b2s.load(WORK / f"{stem}.b2s")
    layers = []
    for name, enc in cm.tensors.items():
        kernel = kernel_for(enc)
        if not enc.compressed or kernel is None or len(enc.layout.shape) != 2:
            continue
        codec = generator_for(enc.config)
        layer = CompactLinear(enc, kernel, None)  # what a fused restore holds: codes in lanes, fp32 scales
        tensors, prepared, _ = layer._kernel_arguments()  # prepared once, as the layer does at its first call
        dense = codec.decode(enc, dtype=torch.float32)
        x = torch.randn(1, enc.layout.cols)
        layers.append((codec, kernel, enc, tensors, dense, torch.empty_like(dense), x, prepared, layer))
    n_weights = sum(layer[4].numel() for layer in layers)
    variants = {
        "memory copy of the dense fp32 weights": lambda L: L[5].copy_(L[4]),
        "codec's own decode (on-the-fly restore today)": lambda L: L[0].decode(L[2]),
        "compiled decode (big2small.kernels)": lambda L: L[1].decode_matrix(L[3], L[2], L[7]),
        "fused product, batch 1 (kernel)": lambda L: L[1].matmul(L[3], L[2], L[6], L[7]),
        "CompactLinear forward, batch 1 (fused product and the layer's Python)": lambda L: L[8](L[6]),
        "dense fp32 product, batch 1 (PyTorch)": lambda L: L[6] @ L[4].T,
    }
    for fn in variants.values():  # warm-up: compilation, caches
        fn(layers[0])
    times = {k: [] for k in variants}
    cpu_times = {k: [] for k in variants}
    for _ in range(repeats):
        for key, fn in variants.items():
            wall, cpu = (sum(t) for t in zip(*(_seconds(lambda L=layer: fn(L)) for layer in layers)))
            times[key].append(wall)
            cpu_times[key].append(cpu)
    return {"weights": n_weights, "tensors": len(layers), "load_average_1min": os.getloadavg()[0],
            "seconds": {k: statistics.median(v) for k, v in times.items()}, "all_seconds": times,
            "cpu_seconds": {k: statistics.median(v) for k, v in cpu_times.items()}, "all_cpu_seconds": cpu_times}


# --- 2. generation, one variant per process ------------------------------------------------------

def generation_variants() -> dict[str, list[str]]:
    variants = {"PyTorch dense fp32": ["dense"]}
    for stem, (label, _) in ARTIFACTS.items():
        variants[f"on-the-fly restore (today): {label}"] = ["on-the-fly", stem]
    for stem, (label, _) in ARTIFACTS.items():
        variants[f"fused restore (CompactLinear): {label}"] = ["fused", stem]
    for label, gguf in GGUFS.items():
        variants[label] = ["llama.cpp", gguf]
    return variants


def rss_bytes() -> int:
    """This process's resident set now (VmRSS), bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return -1


def run_variant(kind: str, arg: str | None) -> dict:
    """One generation measurement in this (fresh) process."""
    prompt = prompt_ids()
    if kind == "llama.cpp":
        from big2small.export.llama_cpp import generation_speed

        speed = generation_speed(WORK / arg, prompt, new_tokens=NEW, repeats=1, threads=torch.get_num_threads())
        return {"prompt_tps": speed.prompt_tps, "generate_tps": speed.generate_tps, "new_tokens": NEW, "generate_cpu_tps": None,
                "model_bytes": (WORK / arg).stat().st_size, "rss_bytes": rss_bytes(), "tokens": None}
    from big2small.onthefly import resident_bytes

    if kind == "dense":
        model = b2s.load_model("smollm2").model.eval()
    else:
        model = b2s.restore(WORK / f"{arg}.b2s", on_the_fly=True, fused=kind == "fused")
    new = NEW_ON_THE_FLY if kind == "on-the-fly" else NEW
    _greedy(model, prompt[:8], 2)  # warm-up: compiled kernels loaded, both product paths run once (8 rows > FUSED_MAX_ROWS)
    prompt_s, generate_s, generate_cpu_s, tokens = _greedy(model, prompt, new)
    return {"prompt_tps": len(prompt) / prompt_s, "generate_tps": new / generate_s, "new_tokens": new,
            "generate_cpu_tps": new / generate_cpu_s,
            "model_bytes": resident_bytes(model), "rss_bytes": rss_bytes(), "tokens": tokens}


@torch.no_grad()
def _greedy(model, prompt: list[int], new: int) -> tuple[float, float, float, list[int]]:
    """(prompt seconds, generation seconds, generation CPU seconds of this process, generated ids):
    batch 1, KV cache, argmax."""
    ids = torch.tensor([prompt])
    start = time.perf_counter()
    out = model(ids, use_cache=True)
    middle, middle_cpu = time.perf_counter(), time.process_time()
    tokens = []
    for _ in range(new):
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(token))
        out = model(token, past_key_values=out.past_key_values, use_cache=True)
    return middle - start, time.perf_counter() - middle, time.process_time() - middle_cpu, tokens


def generation(repeats: int, threads: int) -> dict:
    variants = generation_variants()
    runs = {k: [] for k in variants}
    for rep in range(repeats):
        for key, args in variants.items():
            proc = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--run", *args],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{key}: {proc.stderr.strip().splitlines()[-1:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result["load_average_1min"] = os.getloadavg()[0]
            runs[key].append(result)
            print(f"repeat {rep + 1}/{repeats} {key}: {result['generate_tps']:.2f} tok/s", file=sys.stderr, flush=True)
    rows = []
    for key, results in runs.items():
        rows.append({"variant": key, "runs": results,
                     **{k: statistics.median(r[k] for r in results) for k in
                        ("prompt_tps", "generate_tps", "model_bytes", "rss_bytes", "load_average_1min")},
                     "generate_cpu_tps": (statistics.median(r["generate_cpu_tps"] for r in results)
                                          if results[0]["generate_cpu_tps"] is not None else None),
                     "new_tokens": results[0]["new_tokens"], "tokens": results[0]["tokens"]})
    return {"rows": rows}


# --- report --------------------------------------------------------------------------------------

def markdown(results: dict) -> str:
    p = results["protocol"]
    lines = ["# SmolLM2-135M inference with compact weights resident", "",
             f"Batch 1, a {PROMPT}-token prompt, then greedy tokens with the KV cache; {p['threads']} thread(s) "
             f"({p['machine']}, torch {p['torch']}, numba {p['numba']}); median of {p['repeats']} interleaved "
             "repeats, each variant in a fresh process. **The machine was shared** with other engineers' jobs "
             "(2 cores): the load column is the 1-minute load average during the runs; above 2 means "
             "contention, so the tokens/s (wall clock) are lower bounds that compare rows only roughly. "
             "**Tokens per CPU-second** (generated tokens over the generating process's CPU time, "
             "time.process_time) is the figure that compares rows: it does not count the time the process "
             "waited for a core (it still rises under load, from shared caches and memory bandwidth). "
             "llama.cpp reports no CPU time of its own (—).", "",
             "| variant | generated tokens | prompt tok/s | generate tok/s | vs dense | generate tok/CPU-s | "
             "vs dense (CPU) | model tensors | process RSS | load |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    rows = results["generation"]["rows"]
    dense_tps, dense_cpu = rows[0]["generate_tps"], rows[0].get("generate_cpu_tps")
    for r in rows:
        cpu_tps = r.get("generate_cpu_tps")
        cpu = (f"{cpu_tps:.2f} | {cpu_tps / dense_cpu:.2f}x" if cpu_tps is not None and dense_cpu else "— | —")
        lines.append(f"| {r['variant']} | {r['new_tokens']} | {r['prompt_tps']:.1f} | {r['generate_tps']:.2f} | "
                     f"{r['generate_tps'] / dense_tps:.2f}x | {cpu} | {r['model_bytes'] / 2**20:.0f} MiB | "
                     f"{r['rss_bytes'] / 2**20:.0f} MiB | {r['load_average_1min']:.1f} |")
    lines += ["", "Model tensors: the parameters and buffers the PyTorch model holds (for llama.cpp, the GGUF "
              "file, which it maps). Every PyTorch variant keeps the token embedding (tied to the LM head) "
              "dense in fp32: 28.3M of the 134.5M weights, read in full by the LM head at every token.", ""]
    agree = results.get("same_tokens", {})
    if agree:
        lines += ["Greedy tokens of the fused restore against today's on-the-fly restore of the same artifact "
                  f"(first {NEW_ON_THE_FLY}): " + "; ".join(f"{k}: {'same' if v else 'DIFFERENT'}" for k, v in agree.items()) + ".", ""]
    for key, when in (("decode", "measured again, after the generation runs, with the code of this commit"),
                      ("decode_earlier", "the full run's, before its generation runs, with the kernels of "
                                         "that run (docs/inference.md says what changed since)")):
        if key not in results:
            continue
        d_protocol = p.get(key, p)
        lines += [f"## Decode throughput (every compressed Linear weight of the artifact){' - earlier run' if key != 'decode' else ''}", "",
                  f"{d_protocol['threads']} thread(s), median of {d_protocol['repeats']} interleaved repeats"
                  + (f" ({when})" if "decode_earlier" in results else "") + ".", "",
                  "| artifact | way | seconds | weights/s | GB/s of fp32 | vs memory copy | CPU seconds | "
                  "weights/CPU-s | vs memory copy (CPU) | load |", "|---|---|---|---|---|---|---|---|---|---|"]
        for stem, d in results[key].items():
            copy_s = d["seconds"]["memory copy of the dense fp32 weights"]
            cpu_s = d.get("cpu_seconds", {})
            copy_cpu = cpu_s.get("memory copy of the dense fp32 weights")
            for way, sec in d["seconds"].items():
                c = cpu_s.get(way)
                cpu = (f"{c:.3f} | {d['weights'] / c / 1e9:.2f} G | {100 * copy_cpu / c:.0f}%" if c else "— | — | —")
                lines.append(f"| {ARTIFACTS[stem][0]} ({d['weights'] / 1e6:.1f}M weights, {d['tensors']} tensors) | {way} | "
                             f"{sec:.3f} | {d['weights'] / sec / 1e9:.2f} G | {4 * d['weights'] / sec / 1e9:.2f} | "
                             f"{100 * copy_s / sec:.0f}% | {cpu} | {d['load_average_1min']:.1f} |")
        lines.append("")
    lines += ["GB/s of fp32: 4 bytes per weight produced (copy, decodes) or multiplied (products). "
              "The memory copy reads and writes 4 bytes per weight. CPU seconds: time.process_time of the "
              "measuring process, the column that compares rows on a loaded machine.", "",
              "Reproduce: `python benchmarks/inference.py"
              + ("`" if p["threads"] == 1 else f" --threads {p['threads']}`")
              + " (writes this file and its .json)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--decode-only", action="store_true")
    parser.add_argument("--run", nargs="+", help=argparse.SUPPRESS)  # one generation variant, in this process
    args = parser.parse_args()
    import numba

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    if args.run:
        print(json.dumps(run_variant(args.run[0], args.run[1] if len(args.run) > 1 else None)))
        return
    torch.manual_seed(0)
    prepare()
    # The 1-thread table is the one compared across sessions; other thread counts get their own.
    stem = "inference" if args.threads == 1 else f"inference-{args.threads}threads"
    protocol = {"threads": args.threads, "machine": platform.processor() or platform.machine(),
                "torch": torch.__version__, "numba": numba.__version__, "repeats": args.repeats}
    if args.decode_only:
        results = json.loads((OUT / f"{stem}.json").read_text())
        results["protocol"]["decode"] = protocol
        results.setdefault("decode_earlier", results["decode"])  # kept: on a shared machine, runs differ
    else:
        results = {"protocol": protocol}
    results["decode"] = {stem: decode_throughput(stem, args.repeats) for stem in ARTIFACTS}
    if not args.decode_only:
        results["generation"] = generation(args.repeats, args.threads)
        by_name = {r["variant"]: r for r in results["generation"]["rows"]}
        results["same_tokens"] = {label: by_name[f"fused restore (CompactLinear): {label}"]["tokens"][:NEW_ON_THE_FLY]
                                  == by_name[f"on-the-fly restore (today): {label}"]["tokens"] for label, _ in ARTIFACTS.values()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (OUT / f"{stem}.md").write_text(markdown(results))
    print((OUT / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
