"""`big2small fold --distill` on a CNN: the repair's inputs are images inverted from the teacher's
BatchNorm statistics (data-free), and the repair brings the student closer to its teacher on held-out
ones. The CLI loads CNNs from the zoo only, so a tiny BatchNorm CNN is put in the zoo and the command
runs in this process."""

import json

import torch
from typer.testing import CliRunner

import big2small as b2s
from big2small.cli import app
from big2small.models.source import LoadedModel, ModelSource
from big2small.models.zoo import ZOO, ZooEntry
from tiny_models import MBConvNet, randomise_batchnorm


def test_fold_distill_on_a_cnn_repairs_it_on_inverted_images(tmp_path, monkeypatch):
    torch.manual_seed(0)
    teacher = randomise_batchnorm(MBConvNet()).eval()
    monkeypatch.setitem(ZOO, "tiny-cnn", ZooEntry("a tiny BatchNorm CNN", lambda: LoadedModel(
        teacher, ModelSource("module", "tiny-cnn", "image-classifier"))))
    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path / "cache"))
    report, art = tmp_path / "fold.json", tmp_path / "folded.b2s"
    result = CliRunner().invoke(app, ["fold", "tiny-cnn", "--sparsity", "0.3", "--distill", "20", "--distill-samples", "24",
                                      "--distill-lr", "1e-3", "--distill-image-size", "12",
                                      "--distill-inversion-steps", "10", "-o", str(art), "--json", str(report)])
    assert result.exit_code == 0, result.output
    distilled = json.loads(report.read_text())["distill"]
    # KL to the teacher on the 8 held-out synthetic images, never trained on, is lower after the repair.
    assert distilled["steps"] == 20 and distilled["held_out_after"] < distilled["held_out_before"]
    entries = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "synthetic").glob("*.json")]
    assert [(e["source"], e["shape"]) for e in entries] == [("inversion", [3, 12, 12])]  # "auto" is BN inversion
    assert [t.kind for t in b2s.load(art).transforms] == ["fold", "distill"]


def test_bad_image_size_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["fold", "tiny", "--distill", "5", "--distill-image-size", "0",
                                      "-o", str(tmp_path / "x.b2s")])
    assert result.exit_code != 0 and "image_size must be >= 1" in str(result.exception)
    assert not (tmp_path / "x.b2s").exists()
