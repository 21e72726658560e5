"""`big2small eval ARTIFACT` shows the original's figures beside the compressed model's, with the
difference ("how much did I lose"), measured once per model and protocol and then read from the
cache (big2small.models.originals)."""

import json

import pytest
import torch

import big2small as b2s
from big2small.evaluate.suite import EvalSettings
from big2small.models.originals import fingerprint, original_figures
from test_cli import run
from test_cli_eval_bos import save_tiny_causal_lm
from test_readme import save_tiny_bert


@pytest.fixture
def lm_and_artifact(tmp_path):
    model = save_tiny_causal_lm(tmp_path / "lm", bos_token="<bos>", config_bos=2, hidden=64)
    b2s.save(b2s.compress(b2s.load_model(model), "uniform", bits=2, min_numel=0, progress=False), tmp_path / "lm.b2s")
    return model, tmp_path / "lm.b2s"


def eval_json(*args, cache):
    r = run("eval", *args, "--windows", "2", "--context", "16", "--json", "-", env={"BIG2SMALL_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r.stderr


def test_eval_shows_the_original_beside_and_caches_it(lm_and_artifact, tmp_path):
    model, artifact = lm_and_artifact
    cache = tmp_path / "cache"
    first, table = eval_json(artifact, cache=cache)
    assert first["reference"] == str(model) and first["original"]["cached"] is False
    [c] = first["comparison"]
    original_alone, _ = eval_json(model, cache=cache)  # the original evaluated on its own: the same figure
    assert c["metric"] == "perplexity" and c["original"] == original_alone["metrics"][0]["value"]
    assert c["value"] == first["metrics"][0]["value"] and c["difference"] == pytest.approx(c["value"] - c["original"])
    assert c["relative"] == pytest.approx(c["difference"] / c["original"])
    assert "vs the original" in table and "this model" in table and "measured now" in table
    assert ("worse" if c["difference"] > 0 else "better") in table
    assert len(list((cache / "originals").glob("*.json"))) == 1

    second, table = eval_json(artifact, cache=cache)  # the original is read back, not measured again
    assert second["original"]["cached"] is True and second["comparison"] == first["comparison"]
    assert "figures from the cache" in table
    fresh, _ = eval_json(artifact, "--no-cache", cache=cache)
    assert fresh["original"]["cached"] is False and fresh["comparison"] == first["comparison"]


def test_an_original_that_cannot_be_found_is_a_note_not_a_failure(lm_and_artifact, tmp_path, monkeypatch):
    """Perplexity needs no reference: an artifact whose source is gone is measured alone."""
    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path / "cache"))
    model, artifact = lm_and_artifact
    report = b2s.evaluate_target(artifact, reference=str(tmp_path / "moved-away"),
                                 settings=EvalSettings(context=16, windows=2, progress=False))
    assert report.original is None and "moved-away" in report.original_note and report.comparisons() == []
    assert report.metrics[0].metric == "perplexity"


def test_the_cache_is_keyed_by_content_and_protocol(tmp_path, monkeypatch):
    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path / "cache"))
    bert_dir = save_tiny_bert(tmp_path / "bert")
    loaded = b2s.load_model(bert_dir)
    settings = EvalSettings(documents=8, progress=False)
    first = original_figures(loaded.model, "encoder", loaded.tokenizer, settings)
    again = original_figures(b2s.load_model(bert_dir).model, "encoder", loaded.tokenizer, settings)
    assert (first.cached, again.cached) == (False, True)
    assert [m.to_dict() for m in again.metrics] == json.loads(json.dumps([m.to_dict() for m in first.metrics]))
    assert torch.equal(again.reference["embeddings"], first.reference["embeddings"])  # fidelity compares with these
    assert {m.metric for m in first.metrics} == {"mean_cosine", "lee50_pearson"}

    key = fingerprint(loaded.model, loaded.tokenizer, "encoder", settings)
    assert fingerprint(loaded.model, loaded.tokenizer, "encoder", EvalSettings(documents=8, progress=True)) == key
    assert fingerprint(loaded.model, loaded.tokenizer, "encoder", EvalSettings(documents=9)) != key
    with torch.no_grad():
        loaded.model.encoder.layer[0].output.dense.weight[0, 0] += 1e-3
    assert fingerprint(loaded.model, loaded.tokenizer, "encoder", settings) != key


def test_the_original_is_measured_and_let_go_before_the_artifact_is_restored(lm_and_artifact, tmp_path, monkeypatch):
    """eval holds one model at a time: the original is gone (no reference to it left) when the
    artifact's model is built; and its figures are the ones the two models give measured apart."""
    import gc
    import weakref

    import big2small.reports as reports

    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path / "cache"))
    model, artifact = lm_and_artifact
    settings = EvalSettings(context=16, windows=2, progress=False)
    originals, alive_at_restore = [], []
    real_figures, real_restore = reports.original_figures, reports.restore

    def figures(ref_model, *args, **kwargs):
        originals.append(weakref.ref(ref_model))
        return real_figures(ref_model, *args, **kwargs)

    def restore(*args, **kwargs):
        gc.collect()
        alive_at_restore.append([ref() is not None for ref in originals])
        return real_restore(*args, **kwargs)

    monkeypatch.setattr(reports, "original_figures", figures)
    monkeypatch.setattr(reports, "restore", restore)
    report = b2s.evaluate_target(artifact, settings=settings, use_cache=False)
    assert alive_at_restore == [[False]]
    alone = b2s.evaluate_target(model, settings=settings, use_cache=False)
    restored = b2s.evaluate_target(artifact, reference=str(tmp_path / "gone"), settings=settings, use_cache=False)
    assert [m.value for m in report.original] == [m.value for m in alone.metrics]
    assert [m.value for m in report.metrics] == [m.value for m in restored.metrics]


def test_a_model_target_and_its_reference_are_held_one_at_a_time(lm_and_artifact, tmp_path, monkeypatch):
    """eval MODEL --reference ORIGINAL holds one model at a time too: the target (loaded to learn
    its task) is let go while the reference is measured, and the reference is gone when the
    target runs; the figures are the ones the two give measured apart."""
    import gc
    import weakref

    import big2small.reports as reports

    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path / "cache"))
    original, _ = lm_and_artifact
    target = save_tiny_causal_lm(tmp_path / "other", bos_token="<bos>", config_bos=2, hidden=32)
    settings = EvalSettings(context=16, windows=2, progress=False)
    loaded, alive = [], {}
    real_load, real_figures, real_evaluate = reports.load_model, reports.original_figures, reports.evaluate

    def load_model(spec):
        result = real_load(spec)
        loaded.append((str(spec), weakref.ref(result.model)))
        return result

    def living():
        gc.collect()
        return sorted(spec for spec, ref in loaded if ref() is not None)

    def figures(*args, **kwargs):
        alive.setdefault("measuring the reference", living())
        return real_figures(*args, **kwargs)

    def evaluate(*args, **kwargs):
        alive.setdefault("measuring the target", living())
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(reports, "load_model", load_model)
    monkeypatch.setattr(reports, "original_figures", figures)
    monkeypatch.setattr(reports, "evaluate", evaluate)
    report = b2s.evaluate_target(target, reference=str(original), settings=settings, use_cache=False)
    assert alive == {"measuring the reference": [str(original)], "measuring the target": [str(target)]}
    monkeypatch.undo()
    alone = b2s.evaluate_target(original, settings=settings, use_cache=False)
    target_alone = b2s.evaluate_target(target, settings=settings, use_cache=False)
    assert [m.value for m in report.original] == [m.value for m in alone.metrics]
    assert [m.value for m in report.metrics] == [m.value for m in target_alone.metrics]
    assert report.comparisons() and report.reference == str(original)
