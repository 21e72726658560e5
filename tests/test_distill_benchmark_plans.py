"""benchmarks/distill.py --qat's per-row budgets and benchmarks/codecs.py's reuse of its rows
(docs/distillation.md#quantisation-aware-distillation): a row with its own budget ("budget_for")
is keyed by it in both scripts, is measured again when an earlier run used another budget, and a
re-run keeps the rows another run wrote meanwhile."""

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import distill as bench  # noqa: E402


def codecs_bench():
    """benchmarks/codecs.py, loaded under another name (the standard library has a `codecs`)."""
    spec = importlib.util.spec_from_file_location("codecs_benchmark", BENCH / "codecs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_budget_for_overrides_only_its_rows():
    plan = bench.QAT_PLANS["smollm2"]
    for label, by_source in plan["budget_for"].items():
        for source, settings in by_source.items():
            got = bench.qat_distill_settings("smollm2", source, label)
            assert all(got[k] == v for k, v in settings.items())
            assert bench.DistillConfig(**got).max_seconds == settings.get("max_seconds", plan["distill"]["max_seconds"])
    plain = bench.qat_distill_settings("smollm2", "self", "uniform 3-bit g64")
    assert plain["max_seconds"] == plan["distill"]["max_seconds"]
    assert bench.qat_budget("smollm2", "uniform 3-bit g64", "self") == {}


def test_a_row_run_under_another_budget_is_not_current():
    budget = {"max_seconds": None}
    timed = {"distill": {"config": {"steps": 40, "max_seconds": 420.0}}}
    stepped = {"distill": {"config": {"steps": 40, "max_seconds": None}}}
    assert not bench.measured_as_planned(timed, budget)
    assert bench.measured_as_planned(stepped, budget)
    assert bench.measured_as_planned(timed, {})  # rows without a budget of their own are kept as measured


def test_codecs_rows_carry_the_specs_distill_writes():
    codecs = codecs_bench()
    for model, plan in bench.QAT_PLANS.items():
        rows = {r["label"]: r for r in codecs.distilled_rows(model)}
        for label in plan["codecs_protocol"]:
            sources = {"": codecs.DISTILL_SOURCE[model]}
            if label in plan["vectors_for"]:
                sources[", norms too"] = codecs.DISTILL_SOURCE[model] + bench.VECTORS
            for suffix, source in sources.items():
                row = rows.pop(f"{label} + distilled{suffix}")
                assert codecs._spec(row) == bench.codecs_spec(plan["codecs"][label],
                                                              bench.qat_distill_settings(model, source, label))
        assert not rows  # no distilled row that --qat does not measure


def test_record_replaces_its_key_and_keeps_other_runs_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "OUT", tmp_path)
    path = tmp_path / "qat-x.json"
    path.write_text(json.dumps({"rows": [{"codec": "a", "source": "self", "metrics": {"p": 1}}]}))
    session = bench.Session.__new__(bench.Session)  # only what record() reads: no model loaded
    session.name, session.plan, session.task, session.machine = "x", {}, "causal-lm", "m"
    session.path, session.key, session.rows = path, ("codec", "source"), []
    # another run adds a row after this one started
    path.write_text(json.dumps({"rows": [{"codec": "a", "source": "self", "metrics": {"p": 1}},
                                         {"codec": "b", "source": "self", "metrics": {"p": 2}}]}))
    session.record({"codec": "a", "source": "self", "metrics": {"p": 3}})
    rows = json.loads(path.read_text())["rows"]
    assert {(r["codec"], r["metrics"]["p"]) for r in rows} == {("a", 3), ("b", 2)}


def test_repair_plans_make_valid_step_budgeted_configs_and_distinct_rows():
    for plan in bench.PLANS.values():
        methods = []
        for repair in plan.get("repairs", []):
            inputs = repair["inputs"]
            assert 0 < bench.calibration_count(repair) <= inputs["samples"] - inputs["held_out"]
            for variant, settings in repair["variants"].items():
                config = bench.DistillConfig(source=repair["source"], seed=0, **{**plan["distill"], **inputs, **settings})
                config.validate()
                assert config.max_seconds is None and config.samples == inputs["samples"]  # the steps alone end a run
                methods.append(bench.repair_method(repair, variant))
            methods.append(bench.repair_method(repair))
        assert len(methods) == len(set(methods))  # each row has its own key in the JSON
