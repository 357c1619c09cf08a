"""The main job, end to end: `hyperrep demo --quick` writes every output with real numbers."""

import json
import math
import re

from PIL import Image

from hyperrep_hf.cli import main


def test_quick_demo_writes_tables_plots_and_results_and_reuses_stages(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--no-progress"]) == 0

    results = json.loads((out / "results.json").read_text())
    assert {r["features"] for r in results["probe_table"]} == {"sane", "stats", "stats-gbt", "weights"}
    assert {r["property"] for r in results["probe_table"]} == {"test_acc", "epoch", "ggap"}
    assert all(math.isfinite(r["value"]) for r in results["probe_table"])
    sources = {r["source"] for r in results["generation_table"]}
    assert {"kde30", "sub", "scratch", "zoo"} <= sources
    assert {r["epoch"] for r in results["generation_table"]} == {0, 1}
    assert all(0.0 <= r["mean_acc"] <= 1.0 for r in results["generation_table"])
    # the zoo's own trained models beat chance: the zoo learned something
    zoo_acc = [r["mean_acc"] for r in results["generation_table"] if r["source"] == "zoo" and r["epoch"] == 0]
    assert zoo_acc[0] > 0.3

    probe_md = (out / "probe_table.md").read_text()
    num = r"-?\d+\.\d+"
    # SANE, s(W), s(W)+GBT, W: value and Kendall tau each, then the paired differences to both s(W)
    assert re.search(rf"\| test_acc \| r2 \|(?: {num} \|){{8}} [+-]\d+\.\d+ \[[+-]\d+\.\d+, [+-]\d+\.\d+\].* \| [+-]\d", probe_md)
    assert results["bandwidth_scale"] in results["bandwidth_choice"]["scales"]
    sane = next(r for r in results["probe_table"] if r["features"] == "sane" and r["property"] == "epoch")
    assert sane["ci"][0] <= sane["ci"][1] and sane["vs_stats_ci"][0] <= sane["vs_stats_ci"][1]
    gen_md = (out / "generation_table.md").read_text()
    assert re.search(r"\| scratch \| \d\.\d+ ± \d\.\d+ \| \d\.\d+ ± \d\.\d+ \|", gen_md)
    # each source's difference to KDE30 at epoch 0, with its bootstrap interval (none for KDE30 itself)
    assert "| epoch 0 - kde30 [95% CI] |" in gen_md
    assert re.search(r"\| sub \|.* [+-]\d\.\d+ \[[+-]\d\.\d+, [+-]\d\.\d+\] \|", gen_md)
    sub = next(r for r in results["generation_table"] if r["source"] == "sub" and r["epoch"] == 0)
    assert sub["vs_kde30_ci"][0] <= sub["vs_kde30"] <= sub["vs_kde30_ci"][1]

    assert len(results["plots"]) >= 3
    for rel in results["plots"]:
        with Image.open(out / rel) as im:
            assert im.format == "PNG" and min(im.size) > 200
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "probes/sane.json"):
        assert (out / "sane" / name).is_file(), name
    assert (out / "zoo" / "zoo_config.json").is_file()

    # a second run reuses every finished stage: the checkpoint and the tables stay as they were
    stamp = (out / "sane" / "model.safetensors").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--quick", "--no-progress"]) == 0
    assert (out / "sane" / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["probe_table"] == results["probe_table"]
    # a different configuration in the same folder is refused instead of mixing results
    assert main(["demo", "--out", str(out), "--no-progress"]) == 2


def test_sane_counts_as_trained_only_with_the_completion_marker(tmp_path, monkeypatch):
    """A run killed while saving its final files leaves model.safetensors but no marker: the demo
    trains (resumes) again instead of reusing a half-written checkpoint."""
    import hyperrep_hf.training as training
    from hyperrep_hf.demo import DemoSettings, train_demo_sane
    from hyperrep_hf.training.trainer import COMPLETE_NAME

    calls = []
    monkeypatch.setattr(training, "train_sane", lambda args: calls.append(args))
    ckpt = tmp_path / "sane"
    (ckpt / "checkpoints" / "step-0000004").mkdir(parents=True)
    (ckpt / "checkpoints" / "step-0000004" / "trainer_state.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"half")
    settings = DemoSettings.default(quick=True)
    assert train_demo_sane(tmp_path, settings, progress=False) == ckpt
    assert len(calls) == 1 and calls[0].resume == "last"
    (ckpt / COMPLETE_NAME).write_text("{}")
    assert train_demo_sane(tmp_path, settings, progress=False) == ckpt
    assert len(calls) == 1  # reused, not trained again
