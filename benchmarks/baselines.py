"""The baseline benchmark: uniform 8/4/3/2-bit at groups 128 and 64, and low-rank and magnitude
pruning sized to each group-128 row's exact bits per weight, on two real models:

- SmolLM2-135M-Instruct: perplexity on the Wikipedia extract (context 512, first 20 windows,
  token 0 prepended);
- all-MiniLM-L6-v2: mean cosine of sentence embeddings vs fp32 on 300 lee_background documents,
  and Lee-50 Pearson.

Writes benchmarks/results/<model>/{bench.md, bench.json, pareto.png}. Run: `make bench`
(or `python benchmarks/baselines.py [smollm2|minilm ...]`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from big2small.bench import UNIFORM_SWEEP, run_bench
from big2small.evaluate.suite import EvalSettings

ROOT = Path(__file__).resolve().parent
MODELS = ("minilm", "smollm2")


def main(models: list[str]) -> None:
    for name in models:
        match_only = [s for s in UNIFORM_SWEEP if s.endswith("group_size=128")]
        result = run_bench(name, list(UNIFORM_SWEEP), matched=True, match_only=match_only, settings=EvalSettings(),
                           out_dir=ROOT / "results" / name, command=f"python benchmarks/baselines.py {name}")
        print(result.markdown())


if __name__ == "__main__":
    main(sys.argv[1:] or list(MODELS))
