"""Data-free distillation benchmark: repair of folded transformers (docs/distillation.md).

For each model and target (fraction of all parameters removed) the model is folded once (the
data-free fold that the fold benchmark found best for it: MiniLM fold-lsq, SmolLM2 fold-naive;
benchmarks/results/fold/fold.md), then measured:
- without distillation;
- distilled on synthetic inputs (big2small.distill.synthetic; data-free): SmolLM2 on text it
  samples itself, MiniLM on text SmolLM2 samples (re-tokenised) and, to compare routes, on random
  tokens;
- distilled on real text, as the upper bound of what the inputs could give (NOT data-free): 128-token
  windows of the second half of the Wikipedia extract, disjoint from the perplexity windows (its
  first 20 x 512 tokens) and from MiniLM's evaluation documents (lee_background).
- calibrated (rows "calibrated", "calibrated + distill"): folded with activation-aware selection and
  the sequential refit on the model's own synthetic inputs (folding/reconstruct.py; data-free: the
  distillation's training inputs, never its held-out ones), then distilled on the same inputs.
- repair (rows "calibrated on N inputs", the plans' "repairs"): the calibrated fold on a larger set
  of the same synthetic inputs, then distillation variants from it, each with a fixed step budget
  (no time budget: the machine's load does not decide how far a run gets), a cosine learning-rate
  schedule, and the output loss alone or with the per-block hidden-state loss
  (DistillConfig.hidden_weight). `--sparsities 0.2` runs only the rows of that target that the JSON
  lacks; the other rows are kept as an earlier run measured them.
Every distillation run has the same budget (steps, batch, sequence length, learning rate: in the
table and the JSON) and is seeded; metrics are the fold benchmark's (SmolLM2 perplexity, 20
windows of 512 tokens; MiniLM mean cosine to the original on 300 documents and Lee-50 Pearson).

Quantisation-aware distillation (`--qat`; big2small.distill.qat): each model is quantised at about
3.3 bits per compressed weight (uniform 3-bit, and hyper with 6-bit indices on pairs, both with groups
of 64; never 4-bit g32 symmetric, which would match the grid SmolLM2's GGUF weights came from) and
measured as compressed, with the codec's scales distilled on synthetic inputs (the codes re-chosen,
stored bits unchanged: checked per row), and, as the upper bound, distilled on real text. The
allocated trellis at 3.25 and 4.25 bits per compressed weight (the codecs benchmark's "allocated T"
rows; the encoding cached under the cache folder) is distilled the same way (codes kept), with the
scales alone and with the raw norm gains and biases too, and measured under this benchmark's
protocol and, in the same run, under benchmarks/codecs.py's (results/distill/qat-codecs-<model>.json,
which codecs.py reuses).

Distillation into fewer layers (`--layers`; big2small.distill.smaller): SmolLM2 30 -> 24 layers and
MiniLM 6 -> 4, the blocks dropped evenly or by their influence on the residual stream (measured on
the synthetic inputs), each measured as dropped; the better criterion's student is then distilled
on synthetic inputs (weights trained, the fold plans' budgets).

Writes benchmarks/results/distill/{<model>.json, distill.md, qat-<model>.json, qat.md,
layers-<model>.json, layers.md}; rows already in a JSON are kept, so an interrupted run resumes. Wall times were measured on a 2-core CPU shared with other
work: they are upper bounds of what the machine alone would take.
Run: `nice python benchmarks/distill.py [--models minilm,smollm2] [--sparsities 0.2,0.3] [--qat [--codecs LABEL,...] [--sources SOURCE,...] | --layers]
[--replot]`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

import big2small as b2s
from big2small.distill import DistillConfig, distill, loss_for, synthetic_inputs
from big2small.evaluate import data
from big2small.evaluate.perplexity import start_token
from big2small.evaluate.suite import EvalSettings
from big2small.folding import FoldConfig, fold
from big2small.models.tasks import evaluate, get_task, reference_outputs

OUT = Path(__file__).resolve().parent / "results" / "distill"
ONLY: set[float] = set()  # --sparsities: run only these targets of the fold plans (empty: all)
ONLY_CODECS: set[str] = set()  # --codecs: run only these codecs of the --qat plans (empty: all)
ONLY_SOURCES: set[str] = set()  # --sources: run only these distilled rows of the --qat plans (empty: all)
METRIC = {"causal-lm": "perplexity", "encoder": "mean_cosine"}
# Budgets sized for a 2-core CPU shared with three other sessions (load 9-12): one thread (faster
# than two under that contention), 64-token sequences, a step and a time budget per run, and a
# smaller evaluation protocol than the fold benchmark's (fewer perplexity windows / documents; the
# original and the folded rows are re-measured under it, so every row of a table is comparable).
# The repair rows' distillation (PLANS[...]["repairs"]): a fixed step budget (no time budget, so that the
# machine's load does not decide the result) and a cosine learning-rate schedule from a higher peak.
REPAIR_BUDGET = {"max_seconds": None, "lr": 2e-4, "schedule": "cosine"}
PLANS = {
    "minilm": {"sparsities": [0.2, 0.3], "fold": {"norm_repair": "lsq", "repair": "naive", "n_init": 3},
               "calibrated": {"selection": "activation", "norm_repair": "sequential", "repair": "naive"},
               "calibrated_sparsities": [0.1, 0.2, 0.3],
               "sources": ["smollm2", "random", "real"], "only_at": {"random": [0.2], "real": [0.2]},
               "eval": {"documents": 100},
               "distill": {"steps": 150, "samples": 136, "held_out": 8, "batch_size": 8, "seq_len": 64, "lr": 1e-4,
                           "max_seconds": 360.0},
               "repairs": [{"sparsities": [0.2], "source": "smollm2", "inputs": {"samples": 520, "held_out": 8},
                            "variants": {"output loss": {**REPAIR_BUDGET, "steps": 300},
                                         "output + hidden states": {**REPAIR_BUDGET, "steps": 300, "hidden_weight": 1.0}}},
                           # twice the inputs, the same step budget: what more inputs give
                           {"sparsities": [0.2], "source": "smollm2", "inputs": {"samples": 1032, "held_out": 8},
                            "variants": {"output loss": {**REPAIR_BUDGET, "steps": 300},
                                         "output loss, 600 steps": {**REPAIR_BUDGET, "steps": 600}}}]},
    "smollm2": {"sparsities": [0.1, 0.2, 0.3], "fold": {"repair": "naive", "n_init": 3},
                "calibrated": {"selection": "activation", "norm_repair": "sequential", "repair": "naive"},
                "calibrated_sparsities": [0.1, 0.2, 0.3],
                "sources": ["self", "real"], "only_at": {"real": [0.2]},
                "eval": {"windows": 5},
                "distill": {"steps": 60, "samples": 72, "held_out": 8, "batch_size": 4, "seq_len": 64, "lr": 5e-5,
                            "max_seconds": 480.0},
                "repairs": [{"sparsities": [0.2], "source": "self", "inputs": {"samples": 264, "held_out": 8}, "calibration": c,
                             "variants": {"output + hidden states": {**REPAIR_BUDGET, "steps": 30, "lr": 2e-5,
                                                                    "hidden_weight": 1.0}}} for c in (128, 256)]},
}


# Quantisation-aware distillation: the codecs at about 3.3 bits per compressed weight, the inputs
# cached by the fold plans above (same samples, seed and sequence length), a step and time budget.
# "allocated T": bit allocation at T bits per compressed weight (trellis widths per tensor, data-free
# sensitivity; the codecs benchmark's rows of that name), whose trellis scales are trained with the
# codes kept. The labels in "codecs_protocol" are also measured under the codecs benchmark's protocol
# (CodecsProtocol below), in the same run, and written where benchmarks/codecs.py reuses them.
# "budget_for": the rows (codec label -> source -> DistillConfig settings) run with another budget than
# the plan's, e.g. a step budget alone (max_seconds None) where the time budget, on a loaded machine,
# decided how far a run got; a row measured under other settings than these is measured again.
# SmolLM2's allocated 2.25 runs 20 steps (what fitted the session that measured it, on a CPU shared
# at load 6-8: about 65-100 s a step); 3.25 runs what the trellis's cached table values
# (Generator.train_cache: a step 2x faster) bought, the learning rate warmed up over 10 steps then
# decayed on half a cosine: MORE_DATA, 120 steps on 256 training sequences (200 steps gave 28.97,
# held-out KL 0.294 against 0.267: worse; LONGER, 150 steps on 128,
# overfitted them: training KL 0.15 against 0.27 held out; it gave 28.89, qat protocol); with the norm
# gains and biases trained too, LONGER at their own learning rate, 1e-4 (an absolute step on values
# near 1; the scales' 5e-3 had made that row worse than the scales alone).
LONGER = {"steps": 150, "samples": 136, "schedule": "cosine", "warmup_steps": 10}
MORE_DATA = {"steps": 120, "samples": 264, "schedule": "cosine", "warmup_steps": 10}
ALLOCATED = {f"allocated {t}": {"method": None, "bpw": t, "target_over": "compressed"} for t in (2.25, 3.25, 4.25)}
STEPS_ONLY = {"max_seconds": None}
QAT_PLANS = {
    "smollm2": {"codecs": {"uniform 3-bit g64": {"method": "uniform", "bits": 3, "group_size": 64},
                           "hyper 6-bit pairs g64": {"method": "hyper", "bits": 6, "group_size": 64}, **ALLOCATED},
                "codecs_protocol": list(ALLOCATED), "vectors_for": ["allocated 3.25", "allocated 4.25"],
                "budget_for": {"allocated 2.25": {"self": {**STEPS_ONLY, "steps": 20}},
                               "allocated 3.25": {"self": {**STEPS_ONLY, **MORE_DATA},
                                                  "self+vectors": {**STEPS_ONLY, **LONGER, "vector_lr": 1e-4}}},
                "sources": ["self", "real"], "only_for": {"real": ["uniform 3-bit g64"]},
                "eval": {"windows": 5},
                "distill": {"steps": 40, "samples": 72, "held_out": 8, "batch_size": 4, "seq_len": 64, "lr": 5e-3,
                            "max_seconds": 420.0}},
    "minilm": {"codecs": {"uniform 3-bit g64": {"method": "uniform", "bits": 3, "group_size": 64},
                          **{k: v for k, v in ALLOCATED.items() if k != "allocated 2.25"}},
               "codecs_protocol": ["allocated 3.25", "allocated 4.25"], "vectors_for": ["allocated 3.25", "allocated 4.25"],
               "sources": ["smollm2", "real"], "only_for": {"real": ["uniform 3-bit g64"]},
               "eval": {"documents": 100},
               "distill": {"steps": 100, "samples": 136, "held_out": 8, "batch_size": 8, "seq_len": 64, "lr": 5e-3,
                           "max_seconds": 300.0}},
}


# Distillation into fewer layers: the blocks dropped by each criterion, measured as dropped; the
# better criterion's student then distilled (the same inputs and budget as the fold plans).
LAYER_PLANS = {
    "smollm2": {"drop": 6, "criteria": ["even", "influence"], "sources": ["self"], "eval": {"windows": 5},
                "distill": {"steps": 40, "samples": 72, "held_out": 8, "batch_size": 4, "seq_len": 64, "lr": 5e-5,
                            "max_seconds": 420.0}},
    "minilm": {"drop": 2, "criteria": ["even", "influence"], "sources": ["smollm2"], "eval": {"documents": 100},
               "distill": {"steps": 150, "samples": 136, "held_out": 8, "batch_size": 8, "seq_len": 64, "lr": 1e-4,
                           "max_seconds": 300.0}},
}


def real_inputs(task: str, tokenizer, model, config: DistillConfig) -> dict[str, torch.Tensor]:
    """`config.samples` windows of real text (the second half of the Wikipedia extract), shaped
    like the synthetic inputs: start token + seq_len - 1 tokens for a causal LM, [CLS] text [SEP]
    padded to seq_len for an encoder."""
    text = data.wiki_text()
    text = text[len(text) // 2:]
    if task == "causal-lm":
        ids = tokenizer(text[: 40 * config.samples * config.seq_len], return_tensors="pt")["input_ids"][0]
        body = config.seq_len - 1
        if len(ids) < config.samples * body:
            raise SystemExit("not enough real text for the requested samples")
        start, _ = start_token(tokenizer, model.config)
        windows = ids[: config.samples * body].reshape(config.samples, body)
        ids = torch.cat([torch.full((config.samples, 1), start), windows], 1)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    words = text.split()
    chunk = 90  # words per window: about 128 word pieces
    texts = [" ".join(words[i * chunk:(i + 1) * chunk]) for i in range(config.samples)]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=config.seq_len, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class Session:
    """What a model's runs share: the model, its task and tokenizer, the evaluation settings and
    the original's reference outputs, and its rows in OUT/<file> (written after each row, so an
    interrupted run resumes)."""

    def __init__(self, name: str, plan: dict, file: str, key: tuple[str, str], loaded: b2s.LoadedModel | None = None):
        self.name, self.plan, self.path, self.key = name, plan, OUT / file, key
        self.settings = EvalSettings(progress=False, **plan["eval"])
        self.rows = json.loads(self.path.read_text())["rows"] if self.path.exists() else []
        self.done = {(r[key[0]], r[key[1]]) for r in self.rows}  # rows measured by an earlier run
        self.loaded = loaded or b2s.load_model(name)
        self.teacher, self.task, self.tok = self.loaded.model, self.loaded.source.task, self.loaded.tokenizer
        self.reference = reference_outputs(self.teacher, self.task, self.tok, self.settings)
        self.machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s), torch "
                        f"{torch.__version__}; 2 cores shared with other sessions")

    def record(self, row: dict) -> None:
        """Store `row` (replacing an earlier row of the same key: one measured with other settings),
        beside the rows the file holds now (another run's, e.g. `--qat --codecs` of other codecs)."""
        if self.path.exists():
            self.rows = json.loads(self.path.read_text())["rows"]
        self.rows = [r for r in self.rows if (r[self.key[0]], r[self.key[1]]) != (row[self.key[0]], row[self.key[1]])]
        self.rows.append(row)
        self.path.write_text(json.dumps({"model": self.name, "task": self.task, "plan": self.plan, "machine": self.machine,
                                         "rows": self.rows}, indent=1))
        print(f"{self.name} {row[self.key[0]]} {row[self.key[1]]}: {row['metrics']}", flush=True)

    def inputs(self, source: str, settings: dict | None = None) -> tuple[DistillConfig, dict[str, torch.Tensor], float]:
        """The plan's distillation config for `source` (with `settings` replacing some of the plan's,
        e.g. a repair variant's), its inputs (synthetic, or real text: the upper bound) and the
        seconds they took (0 when cached)."""
        config = DistillConfig(source="auto" if source == "real" else source, seed=0,
                               **{**self.plan["distill"], **(settings or {})})
        start = time.perf_counter()
        inputs = real_inputs(self.task, self.tok, self.teacher, config) if source == "real" else \
            synthetic_inputs(self.teacher, self.task, self.tok, config, progress=True,
                             example_input=get_task(self.task).example_input(self.teacher))
        return config, inputs, time.perf_counter() - start

    def measure(self, model) -> dict:
        return {m.metric: m.value for m in evaluate(model, self.task, self.tok, reference=self.reference,
                                                     settings=self.settings)}


def run_model(name: str) -> None:
    plan = PLANS[name]
    session = Session(name, plan, f"{name}.json", ("method", "sparsity_target"))
    teacher, task, measure, record, done = session.teacher, session.task, session.measure, session.record, session.done
    if ("original", 0.0) not in done:
        record({"method": "original", "sparsity_target": 0.0, "sparsity": 0.0, "metrics": measure(teacher)})
    for sparsity in plan.get("calibrated_sparsities", []):
        if not ONLY or sparsity in ONLY:
            run_calibrated(session, sparsity)
    for repair in plan.get("repairs", []):
        for sparsity in repair["sparsities"]:
            if not ONLY or sparsity in ONLY:
                run_repair(session, repair, sparsity)
    for sparsity in [s for s in plan["sparsities"] if not ONLY or s in ONLY]:
        # Some sources only at the targets listed in only_at (the rows are slow).
        sources = [s for s in plan["sources"] if sparsity in plan["only_at"].get(s, [sparsity])]
        methods = ["fold"] + [f"fold+distill-{s}" for s in sources]
        if all((m, sparsity) in done for m in methods):
            continue
        folded = fold(teacher, FoldConfig(sparsity=sparsity, seed=0, **plan["fold"]), progress=False)
        if ("fold", sparsity) not in done:
            record({"method": "fold", "sparsity_target": sparsity, "sparsity": folded.sparsity,
                    "fold_seconds": folded.seconds, "metrics": measure(folded.model), "data_free": True})
        for source in sources:
            method = f"fold+distill-{source}"
            if (method, sparsity) in done:
                continue
            config, inputs, input_seconds = session.inputs(source)
            student = copy.deepcopy(folded.model)
            report = distill(teacher, student, inputs, loss_for(task), config, progress=True)
            record({"method": method, "sparsity_target": sparsity, "sparsity": folded.sparsity,
                    "fold_seconds": folded.seconds, "input_seconds": input_seconds, "distill": report.to_dict(),
                    "metrics": measure(student), "data_free": source != "real"})
            del student


def repair_method(repair: dict, variant: str | None = None) -> str:
    """The method key of a repair row: "calibrated<N>" (the calibrated fold on N training inputs),
    "calibrated<N>+distill-<source>/<variant>" for a distilled one."""
    base = f"calibrated{calibration_count(repair)}"
    return base if variant is None else f"{base}+distill-{repair['source']}/{variant}"


def calibration_count(repair: dict) -> int:
    """How many inputs a repair plan's calibrated fold runs on: repair["calibration"] (the first
    ones), or all of its training inputs."""
    return repair.get("calibration", repair["inputs"]["samples"] - repair["inputs"]["held_out"])


def run_repair(session: Session, repair: dict, sparsity: float) -> None:
    """A repair plan's rows (PLANS[...]["repairs"]): the calibrated fold on a larger set of synthetic inputs
    (repair["inputs"]: the first calibration_count of the training ones), then each variant of repair["variants"] (its own
    DistillConfig settings: loss, learning-rate schedule, step budget) distilled from that fold."""
    methods = [repair_method(repair)] + [repair_method(repair, v) for v in repair["variants"]]
    if all((m, sparsity) in session.done for m in methods):
        return
    config, inputs, input_seconds = session.inputs(repair["source"], repair["inputs"])
    calibration = {k: v[:calibration_count(repair)] for k, v in inputs.items()}
    folded = fold(session.teacher, FoldConfig(sparsity=sparsity, seed=0, **session.plan["calibrated"]),
                  calibration=calibration, progress=True)
    row = {"sparsity_target": sparsity, "sparsity": folded.sparsity, "fold_seconds": folded.seconds,
           "input_seconds": input_seconds, "data_free": True}
    if (methods[0], sparsity) not in session.done:
        session.record({"method": methods[0], **row, "metrics": session.measure(folded.model)})
    for variant, settings in repair["variants"].items():
        method = repair_method(repair, variant)
        if (method, sparsity) in session.done:
            continue
        config, _, _ = session.inputs(repair["source"], {**repair["inputs"], **settings})
        student = copy.deepcopy(folded.model)
        report = distill(session.teacher, student, inputs, loss_for(session.task), config, progress=True)
        session.record({"method": method, **row, "distill": report.to_dict(), "metrics": session.measure(student)})
        del student


def codecs_spec(options: dict, distill: dict | None = None) -> str:
    """A row's settings as text, the key by which benchmarks/codecs.py reuses rows measured elsewhere:
    "allocated:bpw=3.25,target_over=compressed", then "+distill:k=v,..." (the DistillConfig's
    settings that differ from its defaults) for a distilled row."""
    method = options.get("method") or "allocated"
    text = method + ":" + ",".join(f"{k}={v}" for k, v in options.items() if k != "method")
    return text if distill is None else text + "+distill:" + ",".join(f"{k}={v}" for k, v in distill.items())


# A --qat row whose source ends with this trains the raw norm gains and biases too (DistillConfig's
# train_vectors), on the inputs of the source it names: for the codecs in a plan's "vectors_for".
VECTORS = "+vectors"


def qat_budget(name: str, label: str, source: str) -> dict:
    """The settings by which a model's --qat row (codec `label`, inputs `source`) differs from its
    plan's distillation budget (the plan's "budget_for"; empty for most rows)."""
    return QAT_PLANS[name].get("budget_for", {}).get(label, {}).get(source, {})


def qat_distill_settings(name: str, source: str, label: str) -> dict:
    """The DistillConfig settings (as keyword arguments) of a model's --qat row of codec `label` on `source`."""
    base = source.removesuffix(VECTORS)
    return {**QAT_PLANS[name]["distill"], "source": base, "seed": 0,
            **({"train_vectors": True} if source.endswith(VECTORS) else {}), **qat_budget(name, label, source)}


def measured_as_planned(row: dict, budget: dict) -> bool:
    """Whether a distilled --qat row was measured with the settings of `budget` (qat_budget's)."""
    config = row["distill"]["config"] if budget else {}
    return all(k in config and config[k] == v for k, v in budget.items())


def source_label(source: str) -> str:
    """A row's inputs in words, and whether the norms and biases were trained too."""
    base = source.removesuffix(VECTORS)
    return SOURCE_LABEL[base] + (", norm gains and biases trained too" if source != base else "")


class CodecsProtocol:
    """benchmarks/codecs.py's protocol (EvalSettings' defaults: SmolLM2 20 windows of 512 tokens,
    MiniLM 300 documents; the compressed tensors decoded into the model, every other tensor as the
    artifact stores it, in fp16), so that rows measured here sit in the codecs tables. Writes
    OUT/qat-codecs-<model>.json in the format codecs.py reuses (rows keyed by codecs_spec; the fp32
    row and protocols it compares with its own)."""

    def __init__(self, session: Session):
        from big2small.evaluate.suite import EvalSettings as Settings

        self.session, self.path = session, OUT / f"qat-codecs-{session.name}.json"
        self.settings = Settings(progress=False)
        self.reference = reference_outputs(session.teacher, session.task, session.tok, self.settings)
        self.data = json.loads(self.path.read_text()) if self.path.exists() else None
        if self.data is None:
            metrics = evaluate(session.teacher, session.task, session.tok, reference=self.reference, settings=self.settings)
            self.data = {"model": session.name, "task": session.task, "machine": session.machine,
                         "protocols": {m.metric: m.protocol for m in metrics},
                         "rows": [{"method": "fp32", "spec": "original", "bpw_all": 32.0, "bpw_scope": 32.0,
                                   "metrics": {m.metric: m.value for m in metrics}, "sqnr_db": None,
                                   "compress_seconds": None, "note": "reference"}]}
            self._write()

    def has(self, spec: str) -> bool:
        return any(r["spec"] == spec for r in self.data["rows"])

    def record(self, cm, spec: str, family: str, seconds: float, note: str) -> None:
        """Measure `cm` (a CompressedModel) under the codecs protocol and store it as row `spec`."""
        from big2small.bench import measure_decoded

        names = [n for n, e in cm.tensors.items() if e.compressed]
        size = cm.size()
        _, bpw_scope, metrics, sqnr = measure_decoded(self.session.loaded, cm, cm.state_dict(names=names),
                                                      size.bits_compressed, self.reference, self.settings)
        self.data = json.loads(self.path.read_text())  # the rows another run added meanwhile kept
        self.data["rows"].append({"method": family, "spec": spec, "bpw_all": size.bpw_all, "bpw_scope": bpw_scope,
                                  "metrics": metrics, "sqnr_db": sqnr, "compress_seconds": seconds, "note": note})
        self._write()
        print(f"{self.session.name} {spec} (codecs protocol): {metrics}", flush=True)

    def _write(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1))


def run_calibrated(session: Session, sparsity: float) -> None:
    """The calibrated fold (activation-aware selection and sequential refit on the teacher's own
    synthetic inputs, folding/reconstruct.py; data-free), then distilled on the same inputs: rows
    "calibrated" and "calibrated+distill-<source>". The fold sees the training inputs only, never
    the held-out ones."""
    plan, source = session.plan, session.plan["sources"][0]  # the model's own synthetic route
    methods = ["calibrated", f"calibrated+distill-{source}"]
    if all((m, sparsity) in session.done for m in methods):
        return
    config, inputs, input_seconds = session.inputs(source)
    calibration = {k: v[:config.samples - config.held_out] for k, v in inputs.items()}
    folded = fold(session.teacher, FoldConfig(sparsity=sparsity, seed=0, **plan["calibrated"]), calibration=calibration,
                  progress=True)
    if (methods[0], sparsity) not in session.done:
        session.record({"method": methods[0], "sparsity_target": sparsity, "sparsity": folded.sparsity,
                        "fold_seconds": folded.seconds, "input_seconds": input_seconds,
                        "metrics": session.measure(folded.model), "data_free": True})
    if (methods[1], sparsity) not in session.done:
        student = folded.model
        report = distill(session.teacher, student, inputs, loss_for(session.task), config, progress=True)
        session.record({"method": methods[1], "sparsity_target": sparsity, "sparsity": folded.sparsity,
                        "fold_seconds": folded.seconds, "input_seconds": input_seconds, "distill": report.to_dict(),
                        "metrics": session.measure(student), "data_free": True})


def run_qat(name: str) -> None:
    """Compressed, compressed + scales distilled (synthetic inputs; real text as the upper bound);
    the plan's codecs_protocol rows also under the codecs benchmark's protocol."""

    plan = QAT_PLANS[name]
    session = Session(name, plan, f"qat-{name}.json", ("codec", "source"))
    loaded, teacher, task, tok, record, done = (session.loaded, session.teacher, session.task, session.tok,
                                                session.record, session.done)
    codecs = CodecsProtocol(session) if plan.get("codecs_protocol") else None

    def measure(cm) -> dict:
        return session.measure(cm.apply_to(copy.deepcopy(teacher)))

    if ("original", "-") not in done:
        record({"codec": "original", "source": "-", "metrics": session.measure(teacher)})
    for label, options in plan["codecs"].items():
        if ONLY_CODECS and label not in ONLY_CODECS:
            continue
        sources = [s for s in plan["sources"] if label in plan["only_for"].get(s, [label])]
        if label in plan.get("vectors_for", []):
            sources += [s + VECTORS for s in sources if s != "real"]
        both = label in plan.get("codecs_protocol", [])
        specs = {s: codecs_spec(options, None if s == "none" else qat_distill_settings(name, s, label))
                 for s in ["none"] + sources} if both else {}
        current = {(r["codec"], r["source"]) for r in session.rows
                   if r["source"] == "none" or measured_as_planned(r, qat_budget(name, r["codec"], r["source"]))}
        if all((label, s) in current and (not both or codecs.has(specs[s])) for s in ["none"] + sources):
            continue
        plain, encode_seconds = encoded(loaded, name, options)
        size = {"bpw_all": plain.size().bpw_all, "bpw_scope": plain.size().bpw_scope, "bits": plain.size().bits_total}
        if (label, "none") not in current:
            record({"codec": label, "source": "none", "size": size, "encode_seconds": encode_seconds,
                    "metrics": measure(plain)})
        if both and not codecs.has(specs["none"]):
            codecs.record(plain, specs["none"], "ours: allocated", encode_seconds,
                          "one-shot: the encoding its distilled row starts from")
        for source in sources:
            if (label, source) in current and (not both or codecs.has(specs[source])) or ONLY_SOURCES and source not in ONLY_SOURCES:
                continue
            config, inputs, input_seconds = session.inputs(source.removesuffix(VECTORS), qat_budget(name, label, source))
            config = dataclasses.replace(config, train_vectors=source.endswith(VECTORS))
            distilled, report = distilled_copy(teacher, plain, task, tok, config, inputs, label)
            if (label, source) not in current:
                record({"codec": label, "source": source, "size": size, "encode_seconds": encode_seconds,
                        "input_seconds": input_seconds, "distill": report.to_dict(), "metrics": measure(distilled),
                        "data_free": source != "real"})
            if both and not codecs.has(specs[source]):
                codecs.record(distilled, specs[source], "ours: allocated + distilled", encode_seconds + report.seconds,
                              f"{report.trained} trained, {report.steps} steps "
                              f"({report.stopped_by}) on {source_label(source)}, held-out loss "
                              f"{report.held_out_before:.4g} -> {report.held_out_after:.4g}; stored bits as one-shot")


def encoded(loaded: b2s.LoadedModel, name: str, options: dict) -> tuple[b2s.CompressedModel, float]:
    """`loaded` compressed with `options` ({"method": ..., **its options}) and the seconds that took.
    An allocation (no method: minutes per model) is cached as an artifact under the cache folder
    (<cache>/qat-encoded/, keyed by model, settings and library version; the seconds in its
    manifest's sidecar), so that a resumed run or another distillation of it does not encode again."""
    from big2small.cache import cache_dir

    kwargs = {k: v for k, v in options.items() if k != "method"}
    key = f"{name}-{codecs_spec(options)}-{b2s.__version__}".replace(":", "_").replace(",", "_").replace("=", "")
    path = cache_dir() / "qat-encoded" / f"{key}.b2s"
    seconds_file = path.with_suffix(".seconds")
    if options["method"] is None and seconds_file.exists():
        return b2s.load(path), float(seconds_file.read_text())
    start = time.perf_counter()
    plain = b2s.compress(loaded, options["method"], progress=options["method"] is None, **kwargs)
    seconds = time.perf_counter() - start
    if options["method"] is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        b2s.save(plain, path, overwrite=True)
        seconds_file.write_text(f"{seconds:.3f}")  # written last: marks the entry complete
    return plain, seconds


def distilled_copy(teacher, plain, task: str, tokenizer, config: DistillConfig, inputs, label: str):
    """`plain` (a CompressedModel of `teacher`) with its codecs distilled from the teacher on
    `inputs`, and the report; stops the benchmark if the stored bits changed."""
    from big2small.distill.qat import distill_codecs

    tensors, report = distill_codecs(teacher, teacher, plain.tensors, plain.aliases, task=task, tokenizer=tokenizer,
                                     config=config, inputs=inputs)
    distilled = copy.copy(plain)
    distilled.tensors = tensors
    if distilled.size().bits_total != plain.size().bits_total:
        raise SystemExit(f"{label}: distillation changed the stored bits")
    return distilled, report


def run_layers(name: str) -> None:
    """The original with fewer layers (each criterion), then distilled (the better criterion)."""
    from big2small.distill.smaller import fewer_layers

    plan = LAYER_PLANS[name]
    session = Session(name, plan, f"layers-{name}.json", ("criterion", "source"))
    teacher, task, tok, record, done = session.teacher, session.task, session.tok, session.record, session.done
    if ("original", "-") not in done:
        record({"criterion": "original", "source": "-", "metrics": session.measure(teacher)})
    for criterion in plan["criteria"]:
        if (criterion, "none") not in done:
            config, _, _ = session.inputs(plan["sources"][0])  # the influence is measured on these inputs
            student, dropped, _ = fewer_layers(teacher, plan["drop"], criterion=criterion, task=task, tokenizer=tok,
                                               config=dataclasses.replace(config, steps=0))
            record({"criterion": criterion, "source": "none", "drop_layers": dropped.to_dict(),
                    "metrics": session.measure(student)})
    dropped = {r["criterion"]: r for r in session.rows if r["source"] == "none"}
    better = min(dropped, key=lambda c: dropped[c]["metrics"][METRIC[task]] * (1 if task == "causal-lm" else -1))
    for source in plan["sources"]:
        if (better, source) in done:
            continue
        config, inputs, input_seconds = session.inputs(source)
        student, dropped_now, report = fewer_layers(teacher, plan["drop"], criterion=better, task=task, tokenizer=tok,
                                                    config=config)
        record({"criterion": better, "source": source, "drop_layers": dropped_now.to_dict(), "input_seconds": input_seconds,
                "distill": report.to_dict(), "metrics": session.measure(student), "data_free": source != "real"})


def model_table(res: dict, key: str, setup: str, optimiser: str, left: tuple[list[str], Callable[[dict], list[str]]],
                right: tuple[list[str], Callable[[dict], list[str]]]) -> list[str]:
    """A model's section and table: per row (but the original's, whose `key` is "original"), the
    `left` columns, the quality figures and the `right` columns ((headers, cells of a row) each)."""
    metric, rows = METRIC[res["task"]], res["rows"]
    extra = "lee50_pearson" if res["task"] == "encoder" else None
    original = next(r for r in rows if r[key] == "original")
    header = left[0] + quality_header(metric, extra) + right[0]
    lines = section(res["model"], res, original, metric, extra, setup, optimiser)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if r[key] != "original":
            lines.append("| " + " | ".join(left[1](r) + quality_cells(r, original, metric, extra) + right[1](r)) + " |")
    return lines + [""]


def distill_cells(r: dict, *, inputs: bool) -> list[str]:
    """A row's distillation columns: held-out loss before and after, steps, (input seconds,) seconds."""
    d = r.get("distill")
    return [f"{d['held_out_before']:.4g} -> {d['held_out_after']:.4g}" if d else "-",
            f"{d['steps']} ({d['stopped_by']})" if d else "-"] + \
        ([f"{r['input_seconds']:.0f}" if d else "-"] if inputs else []) + [f"{d['seconds']:.0f}" if d else "-"]


DISTILL_HEADER = ["held-out loss before -> after", "steps"]


def layers_markdown(results: dict[str, dict]) -> str:
    lines = ["# Distillation into fewer layers", "",
             "Generated by `python benchmarks/distill.py --layers`; every figure measured in that run. The blocks are",
             "dropped evenly or by their influence on the residual stream (1 - cos(input, output) on synthetic",
             "inputs; data-free); the better criterion's student is distilled from the original on synthetic inputs.",
             "Size: the smaller model's parameters of the original's (stored in fp32, its artifact takes 32 x that share",
             "bits per original weight; `--then` quantises it). Wall times on a 2-core CPU shared with other sessions",
             "(upper bounds).", ""]

    def left(r: dict) -> list[str]:
        dl = r["drop_layers"]
        return [r["criterion"], f"{len(dl['kept'])} of {dl['layers_before']}: {', '.join(map(str, dl['kept']))}",
                f"{dl['parameters_after']:,} of {dl['parameters_before']:,}",
                SOURCE_LABEL[r["source"]] if r.get("distill") else "- (dropped only)"]

    for res in results.values():
        lines += model_table(res, "criterion", f" Layers dropped: {res['plan']['drop']}.", "AdamW",
                             (["criterion", "layers kept", "parameters", "distilled on"], left),
                             (DISTILL_HEADER + ["distill (s)"], lambda r: distill_cells(r, inputs=False)))
    return "\n".join(lines)


def qat_markdown(results: dict[str, dict]) -> str:
    lines = ["# Quantisation-aware distillation: the codec's scales trained on synthetic inputs", "",
             "Generated by `python benchmarks/distill.py --qat`; every figure measured in that run (protocol: the",
             "script's docstring). The scales of every compressed tensor are trained against the original, the",
             "codes re-chosen with them: stored bits identical with and without (checked). Rows marked *data* train",
             "on real text: the upper bound, not data-free. Wall times on a 2-core CPU shared with other sessions",
             "(upper bounds); input time is 0 when the inputs came from the cache.", "",
             "\"allocated T\": bit allocation at T bits per compressed weight (trellis widths at L=10 per tensor,",
             "data-free sensitivity: the codecs benchmark's rows), its trellis scales trained with the codes kept",
             "(\"norm gains and biases trained too\": and the raw 1-D tensors, in fp16 as stored). The same run",
             "measured them under the codecs benchmark's protocol too (more perplexity windows / documents):",
             "results/distill/qat-codecs-<model>.json, shown in results/codecs/<model>.md.", ""]

    def left(r: dict) -> list[str]:
        return [r["codec"], f"{r['size']['bpw_scope']:.3f}", f"{r['size']['bpw_all']:.3f}",
                source_label(r["source"]) if r.get("distill") else "- (compressed only)"]

    def budgets(res: dict) -> str:
        """The rows run with another step or time budget than the plan's, in words (from their own config)."""
        plan, defaults = res["plan"]["distill"], DistillConfig().to_dict()

        def own(c: dict) -> dict:  # a row's settings that differ from its plan's (or the defaults')
            return {k: v for k, v in c.items() if k not in ("source", "seed", "train_vectors", "version")
                    and v != plan.get(k, defaults.get(k))}

        rows = [f"{r['codec']} on {source_label(r['source'])}: " + ", ".join(f"{k} {v}" for k, v in own(c).items())
                + (" (the steps alone end the run)" if c["max_seconds"] is None else "")
                for r in res["rows"] if r.get("distill") for c in [r["distill"]["config"]] if own(c)]
        return (" Rows with their own budget: " + "; ".join(rows) + ". The steps column says what ended each run"
                " (steps: the step budget; time: max_seconds).") if rows else ""

    def in_plan_order(res: dict) -> dict:
        """`res` with its rows by the plan's codecs, then compressed only, synthetic, real text, + vectors."""
        codecs = list(res["plan"]["codecs"])

        def key(r: dict) -> tuple[int, int]:
            source = r["source"]
            rank = 0 if source in ("-", "none") else 3 if source.endswith(VECTORS) else 2 if source == "real" else 1
            return (codecs.index(r["codec"]) if r["codec"] in codecs else -1, rank)

        return {**res, "rows": sorted(res["rows"], key=key)}

    for res in map(in_plan_order, results.values()):
        lines += model_table(res, "codec", budgets(res), "AdamW on the scales' log-gains",
                             (["codec", "bpw (compressed tensors)", "bpw (whole model)", "distilled on"], left),
                             (DISTILL_HEADER + ["inputs (s)", "distill (s)"], lambda r: distill_cells(r, inputs=True)))
    return "\n".join(lines)


SOURCE_LABEL = {"self": "its own sampled text", "smollm2": "SmolLM2-sampled text", "random": "random tokens",
                "real": "real text (*data*)"}


def section(name: str, res: dict, original: dict, metric: str, extra: str | None, setup: str, optimiser: str) -> list[str]:
    """A model's heading and setup line: the machine, the original's figures, `setup` (e.g. the
    fold's settings), the distillation budget and the evaluation protocol."""
    figures = f"{metric} {original['metrics'][metric]:.4g}" + (f", {extra} {original['metrics'][extra]:.4g}" if extra else "")
    return [f"## {name}", "", f"Machine: {res['machine']}. Original {figures}.{setup} Distillation budget: "
            + ", ".join(f"{k} {v}" for k, v in res["plan"]["distill"].items()) + f" ({optimiser}). Evaluation: "
            + ", ".join(f"{k} {v}" for k, v in res["plan"]["eval"].items()) + ".", ""]


def quality_header(metric: str, extra: str | None) -> list[str]:
    return [metric] + ([extra] if extra else []) + (["x original"] if metric == "perplexity" else [])


def quality_cells(r: dict, original: dict, metric: str, extra: str | None) -> list[str]:
    """A row's quality figures, in quality_header's columns."""
    cells = [f"{r['metrics'][metric]:.4g}"] + ([f"{r['metrics'][extra]:.4g}"] if extra else [])
    if metric == "perplexity":
        cells.append(f"{r['metrics'][metric] / original['metrics'][metric]:.2f}x")
    return cells


def markdown(results: dict[str, dict]) -> str:
    lines = ["# Data-free distillation: repair of folded transformers", "",
             "Generated by `python benchmarks/distill.py`; every figure measured in that run (protocol: the script's",
             "docstring). Rows marked *data* train on real text: the upper bound, not data-free. Wall times on a",
             "2-core CPU shared with other work (upper bounds); input time is 0 when the inputs came from the cache.",
             "The held-out loss is measured on held-out inputs of the row's own source, so it compares before and",
             "after within a row, not across rows. Calibrated rows: activation-aware selection and the sequential",
             "refit on the model's own synthetic inputs (docs/folding.md#sequential-reconstruction; data-free); their",
             "fold time includes the passes over those inputs. Repair rows' variants with hidden states: their",
             "held-out loss includes the hidden-state term (DistillConfig.hidden_weight times it).", ""]
    for name, res in results.items():
        metric, rows = METRIC[res["task"]], res["rows"]
        extra = "lee50_pearson" if res["task"] == "encoder" else None
        original = next(r for r in rows if r["method"] == "original")
        fold_settings = " Fold: " + ", ".join(f"{k}={v}" for k, v in res["plan"]["fold"].items()) + "."
        if res["plan"].get("calibrated"):
            fold_settings += (" Calibrated fold (on the distillation's training inputs): "
                              + ", ".join(f"{k}={v}" for k, v in res["plan"]["calibrated"].items()) + ".")
        # (a plan recorded before "repairs" was a list held one, under "repair")
        for repair in res["plan"].get("repairs", [res["plan"]["repair"]] if "repair" in res["plan"] else []):
            fold_settings += (f" Repair rows (\"calibrated on N inputs\"): the calibrated fold on the first "
                              f"{calibration_count(repair)} training inputs of {SOURCE_LABEL[repair['source']]} (" + ", ".join(f"{k} {v}" for k, v in repair["inputs"].items())
                              + "), each variant distilled from it with the budget below but for: "
                              + "; ".join(f"*{v}*: " + ", ".join(f"{k} {x}" for k, x in settings.items())
                                          for v, settings in repair["variants"].items()) + ".")
        lines += section(name, res, original, metric, extra, fold_settings, "AdamW")
        header = ["target", "params removed", "method", "inputs"] + quality_header(metric, extra) + \
                 ["held-out loss before -> after", "steps", "fold (s)", "inputs (s)", "distill (s)"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        # no distillation, synthetic routes, real text; the calibrated fold last
        order = [f"{v}{s}" for v in ("fold", "calibrated") for s in [""] + [f"+distill-{s}" for s in SOURCE_LABEL]]
        # (repair rows last, in the order they were run: the fold, then its variants)
        rank = {m: i for i, m in enumerate(order)}
        for r in sorted(rows, key=lambda r: (r["sparsity_target"], rank.get(r["method"], len(order) + ("+" in r["method"])))):
            if r["method"] == "original":
                continue
            d = r.get("distill")
            variant, _, source = r["method"].partition("+distill-")
            source, _, repair_variant = source.partition("/")
            if variant.startswith("calibrated") and variant != "calibrated":
                variant = f"calibrated on {variant.removeprefix('calibrated')} inputs"
            method = variant + (" + distill" if d else "") + (f" (*{repair_variant}*)" if repair_variant else "")
            cells = [f"{r['sparsity_target']:.0%}", f"{r['sparsity']:.1%}", method,
                     SOURCE_LABEL[source] if d else "-"] + quality_cells(r, original, metric, extra)
            cells += [f"{d['held_out_before']:.4g} -> {d['held_out_after']:.4g}" if d else "-",
                      f"{d['steps']} ({d['stopped_by']})" if d else "-", f"{r['fold_seconds']:.0f}",
                      f"{r['input_seconds']:.0f}" if d else "-", f"{d['seconds']:.0f}" if d else "-"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PLANS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a loaded 2-core CPU).")
    parser.add_argument("--sparsities", default=None, help="Only these targets of the fold plans (e.g. 0.2,0.3).")
    parser.add_argument("--codecs", default=None, help="With --qat: only these codecs (labels, e.g. 'allocated 3.25').")
    parser.add_argument("--sources", default=None, help="With --qat: only these distilled rows (e.g. 'self,self+vectors').")
    parser.add_argument("--replot", action="store_true", help="Only rebuild the table from the JSON files.")
    parser.add_argument("--qat", action="store_true", help="Run the quantisation-aware distillation rows instead.")
    parser.add_argument("--layers", action="store_true", help="Run the fewer-layers rows instead.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.sparsities:  # the plans (recorded in the JSON) stay whole; only these targets run
        ONLY.update(float(x) for x in args.sparsities.split(","))
    if args.codecs:  # the plans stay whole; only these codecs run
        ONLY_CODECS.update(x.strip() for x in args.codecs.split(","))
    if args.sources:
        ONLY_SOURCES.update(x.strip() for x in args.sources.split(","))
    for name in args.models.split(",") if not args.replot else []:
        run_qat(name) if args.qat else run_layers(name) if args.layers else run_model(name)
    results = {name: json.loads((OUT / f"{name}.json").read_text()) for name in PLANS if (OUT / f"{name}.json").exists()}
    qat = {name: json.loads((OUT / f"qat-{name}.json").read_text()) for name in QAT_PLANS
           if (OUT / f"qat-{name}.json").exists()}
    (OUT / "distill.md").write_text(markdown(results))
    if qat:
        (OUT / "qat.md").write_text(qat_markdown(qat))
    layers = {name: json.loads((OUT / f"layers-{name}.json").read_text()) for name in LAYER_PLANS
              if (OUT / f"layers-{name}.json").exists()}
    if layers:
        (OUT / "layers.md").write_text(layers_markdown(layers))
    print(f"wrote {OUT}/distill.md")


if __name__ == "__main__":
    main()
