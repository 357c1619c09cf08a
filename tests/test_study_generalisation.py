"""scripts/study_generalisation.py end to end on its --quick sizes: part (4) builds the narrow ResNet
zoo, trains SANE on three zoo families, evaluates the unseen MLP, saves and resumes (a subprocess:
the script sets torch's thread count and denormal flushing for its whole process)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "study_generalisation.py"


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_the_resnet_part_runs_saves_and_is_kept_on_a_rerun(tmp_path):
    done = run("--root", str(tmp_path), "--quick", "--parts", "resnet")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    part = results["resnet"]
    assert part["normalisation_choice"]["normalization"] in ("model", "token")
    assert {(r["features"], r["property"]) for r in part["probes_P"]} == {
        (f, p) for f in ("sane", "stats") for p in ("test_acc", "epoch", "ggap")}
    sources = {r["source"] for r in part["generation_unseen_architecture"]}
    assert {"neighbours", "prompt", "scratch"} <= sources
    scratch_after_five = next(r["mean_acc"] for r in part["generation_unseen_architecture"]
                              if r["source"] == "scratch" and r["epoch"] == 5)
    for row in part["generation_unseen_architecture"]:  # the goal's relation, with its interval
        if row["source"] != "scratch":
            assert abs(row["vs_scratch_at_5"] - (row["mean_acc"] - scratch_after_five)) < 1e-9
            assert row["vs_scratch_at_5_ci"][0] <= row["vs_scratch_at_5"] <= row["vs_scratch_at_5_ci"][1]
    assert 0 <= part["reconstruction_R"]["original_acc"] <= 1
    zoo = json.loads((tmp_path / "gen-digits-resnet" / "zoo_config.json").read_text())
    assert zoo["architecture"] == "resnet18" and zoo["architecture_kwargs"]["width"] == 4
    assert "(4) The unseen MLP with SANE trained on D + C + a narrow ResNet-18 zoo R" in (
        tmp_path / "study" / "tables.md").read_text()
    again = run("--root", str(tmp_path), "--quick", "--parts", "resnet")
    assert again.returncode == 0 and "part resnet: done before, kept" in again.stdout
    wrong = run("--root", str(tmp_path), "--quick", "--parts", "resnets")
    assert wrong.returncode == 2 and "unknown part 'resnets'" in wrong.stderr


def load_study():
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_generalisation", SCRIPT)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    return study


def test_digit_frame_cuts_the_ink_to_a_centred_square():
    import numpy as np

    study = load_study()
    image = np.zeros((28, 28), np.uint8)
    image[5:10, 12:14] = 200  # ink 5 rows x 2 columns
    image[7, 12] = 90
    framed = study.digit_frame(image)
    assert framed.shape == (5, 5)
    assert (framed[:, 1:3] == image[5:10, 12:14]).all()  # centred: (5 - 2) // 2 = 1 blank column on the left
    assert framed[:, [0, 3, 4]].max() == 0
    blank = np.zeros((28, 28), np.uint8)
    assert study.digit_frame(blank) is blank


def test_the_scarce_transfer_target_keeps_the_test_images_and_a_prefix_of_the_train_images(tmp_path):
    import datasets
    import numpy as np
    import pytest
    import torch

    from hyperrep_hf.zoo.tasks import load_task

    study = load_study()
    full, scarce = study.mnist_8x8(tmp_path, framed=True), study.mnist_8x8(tmp_path, framed=True, train_size=400)
    assert scarce["name"] == "mnist-8x8-framed-400" and full["name"] == "mnist-8x8-framed"
    assert (scarce["mean"], scarce["std"]) == ([0.5], [0.5])
    a, b = load_task(full), load_task(scarce)
    assert b.input_shape == a.input_shape == (1, 8, 8)
    assert len(b.train_y) + len(b.val_y) == 400 and len(a.train_y) + len(a.val_y) == 4000
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    full_train = datasets.load_from_disk(full["dataset"])["train"].select(range(400))
    scarce_train = datasets.load_from_disk(scarce["dataset"])["train"]
    assert full_train["label"] == scarce_train["label"]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(full_train["image"], scarce_train["image"]))
    with pytest.raises(ValueError, match="train_size must be in 1 ... 4000"):
        study.mnist_8x8(tmp_path, train_size=5000)


def test_the_sizes_part_compares_one_epoch_of_transfer_with_five_of_scratch_at_each_size(tmp_path):
    done = run("--root", str(tmp_path), "--quick", "--parts", "sizes")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "study" / "results.json").read_text())["sizes"]["rows"]
    study = load_study()
    assert [(r["train_images"], r["source"]) for r in rows] == [
        (n, s) for n in study.TRANSFER_SIZES for s in ("kde30", "sub", "zoo")]
    for r in rows:
        assert abs(r["vs_scratch_at_5"] - (r["mean_acc_epoch_1"] - r["scratch_epoch_5"])) < 1e-9
        assert r["vs_scratch_at_5_ci"][0] <= r["vs_scratch_at_5"] <= r["vs_scratch_at_5_ci"][1]
    assert (tmp_path / "study" / "transfer_sizes.png").stat().st_size > 0
    assert "Task transfer against the target's size" in (tmp_path / "study" / "tables.md").read_text()
