"""Export benchmark: SmolLM2-135M artifacts exported to GGUF and run by llama.cpp.

For each artifact it measures, in this run:
- the exported GGUF's bytes against the artifact's weights (tensor file + manifest);
- perplexity under llama.cpp (llama-cpp-python, logits of every position) against our own
  evaluation of the artifact, on one protocol (big2small.evaluate.perplexity: the Wikipedia
  extract, context 512, first 8 windows, token 0 prepended);
- the weight SQNR (dB, against our decoded weights) of tensors re-quantised to a fallback type;
- llama.cpp's speed at batch 1: a 128-token prompt, then 128 tokens generated greedily (best of 2).

Artifacts: uniform 4-bit group-32 *symmetric* (exports as Q4_0 bit for bit; NOT asymmetric 4-bit
g32, which reproduces the source GGUF's Q4_1 grid exactly), uniform 8-bit g32 symmetric (Q8_0),
hyper (8-bit index per pair, about 4 bits per weight; no GGUF type: re-quantised to q4_0), and the original weights in F32 (everything kept raw), which llama.cpp's own quantiser turns
into Q4_K_M, the file llama.cpp users would make. The token embedding stays fp16 in our artifacts
(the default scope), so their GGUFs carry it as F16.

It also measures how often an asymmetric group-32 offset -z*s is an fp16 number (Q4_1/Q5_1 need
it to hold our codes exactly), on SmolLM2 (whose weights sit on a 4-bit g32 asymmetric grid) and
on all-MiniLM-L6-v2 (fp32 weights).

Writes benchmarks/results/export/{export.json, export.md}. Run: `python benchmarks/export.py`
(about 20 minutes on 2 idle cores; needs `pip install big2small[export]`); `--report` writes the
table from the rows finished so far; `--prepare` makes the
artifacts, exports and our perplexities only (kept in $BIG2SMALL_BENCH_DIR/state.json, which a
later run reuses).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
import platform
import time
from pathlib import Path

import torch

import big2small as b2s
from big2small.evaluate import data
from big2small.evaluate.perplexity import perplexity
from big2small.export.ggml_blocks import block_type_of, offset_exact
from big2small.export.llama_cpp import LlamaCppLM, generation_speed, quantize
from big2small.generators import GeneratorConfig
from big2small.models.load import load_tokenizer_from

OUT = Path(__file__).resolve().parent / "results" / "export"
WORK = Path(os.environ.get("BIG2SMALL_BENCH_DIR", "/tmp/big2small-export-bench"))
CONTEXT, WINDOWS = 512, 8  # 8 windows (not 20): llama.cpp's logits of every position are slow on 2 shared cores
PROMPT, NEW = 128, 128
PREPARE_ONLY = "--prepare" in sys.argv  # artifacts, exports and our perplexities only (no llama.cpp)
REPORT_ONLY = "--report" in sys.argv  # write the table from the rows finished so far (state.json), compute nothing

ARTIFACTS = {  # name -> (recipe, fallback types to export with)
    "uniform 4-bit g32 sym": (b2s.make_recipe("uniform", bits=4, group_size=32, symmetric=True), [None]),
    "uniform 8-bit g32 sym": (b2s.make_recipe("uniform", bits=8, group_size=32, symmetric=True), [None]),
    "hyper 8-bit index (~4 bpw)": (b2s.make_recipe("hyper", bits=8), ["q4_0"]),
    "original (F32)": (b2s.Recipe(default=None, raw_dtype="float32"), [None]),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def ppl(model, tokenizer) -> dict:
    r = perplexity(model, tokenizer, data.wiki_text(), context=CONTEXT, windows=WINDOWS, batch_size=4,
                   progress=False, dataset="Wikipedia extract (gensim test data)")
    return {"ppl": r.ppl, "mean_nll": r.mean_nll, "bos_token_id": r.protocol["bos_token_id"], "tokens": r.tokens_scored,
            "window_nll": list(r.window_nll)}


def llama_cpp_row(gguf: Path, config, tokenizer, prompt: list[int]) -> dict:
    lm = LlamaCppLM(gguf, n_ctx=CONTEXT + 1, config=config)
    row = {"gguf_bytes": gguf.stat().st_size, "llama_cpp": ppl(lm, tokenizer)}
    del lm
    row["speed"] = {**generation_speed(gguf, prompt, new_tokens=NEW, repeats=2).__dict__,
                    "load_average_1min": os.getloadavg()[0]}  # the machine is shared: how busy it was
    return row


def offsets_exact_share(loaded, name: str) -> dict:
    """Share of asymmetric 4-bit group-32 blocks whose offset -z*s is an fp16 number."""
    cm = b2s.compress(loaded, b2s.make_recipe("uniform", bits=4, group_size=32, symmetric=False), progress=False)
    shares = [offset_exact(e) for e in cm.tensors.values() if block_type_of(e) is not None]
    exact = torch.cat(shares)
    return {"model": name, "blocks": exact.numel(), "exact_share": float(exact.float().mean()),
            "tensors_all_exact": sum(bool(s.all()) for s in shares), "tensors": len(shares)}


def report_from_state() -> None:
    """export.md and export.json from the rows state.json holds (an interrupted run's finished rows)."""
    state = json.loads((WORK / "state.json").read_text())
    results = {"protocol": protocol(), "offsets": state["offsets"], "rows": []}
    for name in ARTIFACTS:
        for key, export in state.get(name, {}).get("exports", {}).items():
            if "llama_cpp" in export:
                results["rows"].append({"artifact": name, "fallback": None if key == "None" else key,
                                        **{k: v for k, v in state[name].items() if k != "exports"}, **export})
    if "q4_k_m" in state:
        results["rows"].append({"artifact": "llama.cpp Q4_K_M of the original (llama_model_quantize from our F32 export)",
                                "fallback": None, **state["q4_k_m"]})
    missing = [f"{n} ({f or 'exact'})" for n, (_, fs) in ARTIFACTS.items() for f in fs
               if "llama_cpp" not in state.get(n, {}).get("exports", {}).get(str(f), {})]
    missing += [] if "q4_k_m" in state else ["llama.cpp Q4_K_M"]
    results["not_measured"] = missing
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "export.json").write_text(json.dumps(results, indent=1))
    (OUT / "export.md").write_text(markdown(results))


def protocol() -> dict:
    return {"perplexity": f"Wikipedia extract, context {CONTEXT}, first {WINDOWS} windows, "
                          "model's start token prepended (id 0 for SmolLM2), fp32 log-softmax",
            "speed": f"batch 1, {PROMPT}-token prompt then {NEW} greedy tokens, best of 2, "
                     f"{os.cpu_count()} threads", "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__}


def main() -> None:
    if REPORT_ONLY:
        return report_from_state()
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    results = {"protocol": protocol(),
               "rows": [], "offsets": []}
    loaded = b2s.load_model("smollm2")
    tokenizer = loaded.tokenizer
    ids = tokenizer(data.wiki_text()[:20000], add_special_tokens=False)["input_ids"]
    prompt = ids[:PROMPT]
    state_file = WORK / "state.json"  # artifacts, exports and our perplexities, reused by a rerun
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if "offsets" not in state:
        state["offsets"] = [offsets_exact_share(loaded, "smollm2 (weights on a Q4_1 grid)"),
                            offsets_exact_share(b2s.load_model("minilm"), "all-MiniLM-L6-v2 (fp32)")]
        state_file.write_text(json.dumps(state, indent=1))
    results["offsets"] = state["offsets"]
    config = loaded.model.config  # for the start token: the same model's config
    f32_gguf = None
    for name, (recipe, fallbacks) in ARTIFACTS.items():
        artifact = WORK / f"{slug(name)}.b2s"
        if name not in state:
            start = time.perf_counter()
            cm = b2s.compress(loaded, recipe, progress=False)
            compress_s = time.perf_counter() - start
            info = b2s.save(cm, artifact, overwrite=True)
            del cm
            model = b2s.restore(artifact)
            state[name] = {"compress_s": compress_s, "artifact_weight_bytes": info.weights_bytes,
                           "bpw_all": b2s.load(artifact).size().bpw_all, "ours": ppl(model, tokenizer), "exports": {}}
            del model
            state_file.write_text(json.dumps(state, indent=1))
        for fallback in fallbacks:
            gguf = WORK / f"{slug(name)}{'-' + fallback if fallback else ''}.gguf"
            key = str(fallback)
            if key not in state[name]["exports"]:
                report = b2s.export(artifact, "gguf", gguf, fallback_type=fallback, overwrite=True)
                state[name]["exports"][key] = {"types": dict(Counter(t.type for t in report.tensors)),
                                               "requantised": len(report.requantised),
                                               "requantised_sqnr_db": report.requantised_sqnr_db}
                state_file.write_text(json.dumps(state, indent=1))
            if name.startswith("original"):
                f32_gguf = gguf
            if PREPARE_ONLY:
                continue
            if "llama_cpp" not in state[name]["exports"][key]:
                state[name]["exports"][key].update(llama_cpp_row(gguf, config, tokenizer, prompt))
                state_file.write_text(json.dumps(state, indent=1))
            row = {"artifact": name, "fallback": fallback,
                   **{k: v for k, v in state[name].items() if k != "exports"}, **state[name]["exports"][key]}
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    if PREPARE_ONLY:
        return
    if "q4_k_m" not in state:
        q4km = quantize(f32_gguf, WORK / "llama-cpp-q4_k_m.gguf", "Q4_K_M")
        state["q4_k_m"] = llama_cpp_row(q4km, config, tokenizer, prompt)
        state_file.write_text(json.dumps(state, indent=1))
    row = {"artifact": "llama.cpp Q4_K_M of the original (llama_model_quantize from our F32 export)",
           "fallback": None, **state["q4_k_m"]}
    results["rows"].append(row)
    print(json.dumps(row), flush=True)
    results["not_measured"] = []
    (OUT / "export.json").write_text(json.dumps(results, indent=1))
    (OUT / "export.md").write_text(markdown(results))


def markdown(results: dict) -> str:
    lines = ["# SmolLM2-135M exported to GGUF, run by llama.cpp", "",
             "| artifact | GGUF types (tensors) | re-quantised (SQNR vs our weights) | artifact weights | GGUF | "
             "ppl ours | ppl llama.cpp | difference | prompt tok/s | generate tok/s | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        ours = r.get("ours", {}).get("ppl")
        theirs = r["llama_cpp"]["ppl"]
        req = (f"{r['requantised']} to {r['fallback']} ({r['requantised_sqnr_db']:.2f} dB)" if r.get("requantised")
               else ("none" if "requantised" in r else "(llama.cpp's own quantiser)"))
        lines.append(
            f"| {r['artifact']} | {', '.join(f'{k} {v}' for k, v in sorted(r.get('types', {}).items())) or 'Q4_K/Q6_K mix'} "
            f"| {req} | {r['artifact_weight_bytes'] / 1e6:.2f} MB | {r['gguf_bytes'] / 1e6:.2f} MB | "
            f"{ours:.3f} | {theirs:.3f} | {100 * (theirs / ours - 1):+.2f}% | "
            f"{r['speed']['prompt_tps']:.0f} | {r['speed']['generate_tps']:.1f} | {r['speed']['load_average_1min']:.1f} |"
            if ours is not None else
            f"| {r['artifact']} | Q4_K_M mix | {req} | - | {r['gguf_bytes'] / 1e6:.2f} MB | - | {theirs:.3f} | - | "
            f"{r['speed']['prompt_tps']:.0f} | {r['speed']['generate_tps']:.1f} | {r['speed']['load_average_1min']:.1f} |")
    lines += ["", "Asymmetric 4-bit group-32 offsets -z*s that are fp16 numbers (Q4_1 holds our codes exactly "
              "only where they are):", "", "| model | blocks | exact share | tensors with every block exact |", "|---|---|---|---|"]
    for o in results["offsets"]:
        lines.append(f"| {o['model']} | {o['blocks']} | {100 * o['exact_share']:.2f}% | {o['tensors_all_exact']} / {o['tensors']} |")
    p = results["protocol"]
    lines += ["", f"Perplexity: {p['perplexity']}; ours is big2small.evaluate.perplexity on the restored artifact "
              "(PyTorch, fp32), llama.cpp's the same function over llama.cpp's logits (big2small.export.llama_cpp). "
              f"Speed: {p['speed']} ({p['machine']}, torch {p['torch']}); the machine was shared with other jobs, "
              "so each row gives the 1-minute load average when its speed was measured (2 cores: above 2 means "
              "contention, and the tokens/s are lower bounds that compare rows only roughly). GGUF bytes include about 1.6 MB of "
              "tokenizer metadata; artifact weights are its tensor file and manifest.", "",
              "Reproduce: `python benchmarks/export.py` (writes this file and export.json)."]
    if results.get("not_measured"):
        lines += ["", "**Not measured in this run** (the session ran out of time on a shared machine): "
                  + "; ".join(results["not_measured"]) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
