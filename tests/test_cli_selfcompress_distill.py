"""`big2small selfcompress --distill` as a user runs it: self-compression of a trained CNN on
synthetic images only, in a real subprocess."""

import json

import pytest
import torch
from safetensors.torch import save_file

import big2small as b2s
from test_cli import FASHION, assert_one_line_error, run


@pytest.fixture
def teacher_file(tmp_path):
    from big2small.models.zoo.fashion import fashion_cnn

    torch.manual_seed(0)
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in fashion_cnn().state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("args,message", [
    (["--teacher", "{teacher}"], "--teacher, --distill-lr, --distill-seconds and --distill-shift need --distill STEPS"),
    (["--distill-seconds", "5"], "need --distill STEPS"),
    (["--distill-shift", "2"], "need --distill STEPS"),
    (["--distill", "5", "--distill-shift", "-1"], "--distill-shift must be >= 0 pixels, got -1"),
    (["--distill", "5", "--init", "scratch"], "--distill fine-tunes the teacher from 8 bits: leave out --init scratch"),
    (["--distill", "-1"], "--distill must be a number of steps >= 0"),
    (["--distill", "5", "--teacher", "{missing}"], "no such file"),
    (["--distill", "5", "--teacher", "{bad}"], "not a state dict of the recipe's FashionCNN"),
    (["--distill", "5", "--teacher", "{teacher}", "--distill-source", "smollm2"], "does not apply to a fashion-mnist-classifier"),
    (["--distill", "5", "--distill-samples", "1"], "needs at least 2 samples (1 held out)"),
])
def test_bad_distill_options_are_refused_in_one_line(teacher_file, tmp_path, args, message):
    bad = tmp_path / "bad.safetensors"
    save_file({"weight": torch.zeros(2)}, str(bad))
    paths = {"teacher": teacher_file, "missing": tmp_path / "missing.safetensors", "bad": bad}
    result = run("selfcompress", *[a.format(**paths) for a in args], "--out-dir", tmp_path / "out",
                 env={"BIG2SMALL_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(result, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST (Debian dataset-fashion-mnist) is not installed")
def test_selfcompress_with_a_teacher_trains_on_synthetic_images_and_exports(teacher_file, tmp_path):
    result = run("selfcompress", "--distill", "6", "--teacher", teacher_file, "--distill-samples", "24", "--gamma", "0.5",
                 "--distill-shift", "1", "--batch-size", "8", "--quantizer-lr", "0.05", "--out-dir", tmp_path / "out", "--json", tmp_path / "r.json",
                 env={"BIG2SMALL_CACHE": str(tmp_path / "cache")}, columns=200)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    teacher, point = report["points"]
    assert teacher["gamma"] is None and teacher["inputs"] == "given teacher"
    assert point["gamma"] == 0.5 and point["inputs"] == "synthetic images (inversion), augmented (flip true, shift 1 px)"
    assert report["augment"]["max_shift"] == 1 and report["augment"]["flip"] is True
    assert len(point["history"]) == 3  # 6 steps over 16 training images in batches of 8: three passes of 2 steps
    assert report["distill"]["steps"] == 6 and report["init"] == "fp32"
    assert "inverting BatchNorm statistics" in result.stderr and "gamma 0.5" in result.stderr
    assert b2s.restore(tmp_path / "out" / "gamma-0.5.b2s").conv1.in_channels == 1
