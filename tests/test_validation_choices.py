"""Settings are chosen on validation, never on test: the KDE bandwidth scale ("auto") is picked by
validation accuracy of decoded draws without reading the task's test split, stored with the anchors
and reused without task data; validation and test rows are scored whole (no exploded-checkpoint rule
outside SANE's training data)."""

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import pipeline

from hyperrep_hf import SaneConfig, SaneModel, WeightTokenizer
from hyperrep_hf.cli import main as cli
from hyperrep_hf.downstream.evaluation import probe_table
from hyperrep_hf.downstream.generation import (
    BANDWIDTH_SCALES,
    ModelGenerator,
    SamplingAnchors,
    choose_bandwidth_scale,
    load_checkpoint,
    prepare_sampling,
)
from hyperrep_hf.zoo import build_zoo, load_task, load_zoo


class NoTestSplit:
    """A task whose test split raises when read: proves a choice never looks at it."""

    def __init__(self, task):
        self._task = task

    def __getattr__(self, name):
        if name.startswith("test"):
            raise AssertionError(f"the test split was read ({name})")
        return getattr(self._task, name)

    def split(self, name):
        if name == "test":
            raise AssertionError("the test split was read")
        return self._task.split(name)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return build_zoo("digits-seed", tmp_path_factory.mktemp("zoo"), num_models=8, epochs=1, progress=False)


@pytest.fixture(scope="module")
def checkpoint(zoo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    tok = WeightTokenizer()
    tok.layout_of(zoo.build_model(zoo.weights("train")[0]))
    tok.fit_standardization(zoo.weights("train"))
    torch.manual_seed(0)
    SaneModel(SaneConfig.from_preset("tiny", token_size=tok.token_size, window_size=16)).eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_auto_bandwidth_is_chosen_on_validation_without_reading_test(zoo, checkpoint):
    model, tok = load_checkpoint(checkpoint)
    task = NoTestSplit(load_task("digits"))
    anchors = prepare_sampling(checkpoint, zoo, model=model, tokenizer=tok, progress=False, task=task)
    choice = anchors.info["bandwidth_choice"]
    assert choice["scales"] == list(BANDWIDTH_SCALES) and len(choice["validation_accuracy"]) == len(BANDWIDTH_SCALES)
    best = max(zip(choice["validation_accuracy"], choice["scales"]))  # ties: the larger scale
    assert anchors.info["bandwidth_scale"] == best[1]
    # stored with the anchors, in the checkpoint folder
    stored = json.loads((checkpoint / "sampling" / "sampling.json").read_text())
    assert stored["bandwidth_scale"] == anchors.info["bandwidth_scale"] and stored["bandwidth_choice"] == choice
    # the figures are validation accuracies of the decoded draws, recomputed here
    gen = ModelGenerator(model, tok, SamplingAnchors.load(checkpoint), task)
    again = choose_bandwidth_scale(gen)
    assert again["bandwidth_choice"]["validation_accuracy"] == pytest.approx(choice["validation_accuracy"])


def test_the_choice_follows_the_validation_score_and_ties_go_to_the_larger_scale(zoo, checkpoint, monkeypatch):
    model, tok = load_checkpoint(checkpoint)
    anchors = prepare_sampling(checkpoint, zoo, model=model, tokenizer=tok, progress=False, bandwidth_scale=None,
                               save_to=checkpoint / "plain")
    assert "bandwidth_scale" not in anchors.info
    gen = ModelGenerator(model, tok, anchors)
    centre = anchors.latents.mean(0)
    # a score that prefers draws near the anchors: the smallest scale wins
    monkeypatch.setattr(gen, "score", lambda z, generator=None: -(z - centre).flatten(1).norm(dim=1).double())
    assert choose_bandwidth_scale(gen)["bandwidth_scale"] == min(BANDWIDTH_SCALES)
    monkeypatch.setattr(gen, "score", lambda z, generator=None: torch.full((len(z),), 0.5, dtype=torch.float64))
    assert choose_bandwidth_scale(gen)["bandwidth_scale"] == max(BANDWIDTH_SCALES)
    with pytest.raises(ValueError, match="bandwidth_scale must be 'auto' or a finite number"):
        gen.bandwidth_scale(-1)


def test_a_generator_chooses_once_and_the_pipeline_reuses_the_stored_scale(zoo, checkpoint, tmp_path, monkeypatch):
    model, tok = load_checkpoint(checkpoint)
    anchors = prepare_sampling(checkpoint, zoo, model=model, tokenizer=tok, progress=False, bandwidth_scale=None,
                               save_to=tmp_path)
    gen = ModelGenerator(model, tok, anchors, NoTestSplit(load_task("digits")))
    calls = []
    original = ModelGenerator.score
    monkeypatch.setattr(ModelGenerator, "score", lambda self, z, g=None: calls.append(len(z)) or original(self, z, g))
    first = gen.generate(2, "kde30", seed=1)
    chosen = len(calls)
    assert chosen == len(BANDWIDTH_SCALES) and anchors.info["bandwidth_scale"] in BANDWIDTH_SCALES
    gen.generate(2, "kde30", seed=2)
    assert len(calls) == chosen  # chosen once per generator
    explicit = gen.generate(2, "kde30", seed=1, bandwidth_scale=anchors.info["bandwidth_scale"])
    assert all(torch.equal(a["latents"], b["latents"]) for a, b in zip(first, explicit))

    # A checkpoint whose anchors store a scale: the pipeline samples with it and loads no task data.
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder, ignore=shutil.ignore_patterns("sampling", "plain"))
    stored = SamplingAnchors(anchors.latents, anchors.scores, {**anchors.info, "bandwidth_scale": 0.5})
    stored.save(folder)
    pipe = pipeline("weight-generation", model=str(folder), device="cpu")
    calls.clear()
    samples = pipe(num_samples=2, method="kde30", seed=3)
    assert calls == [] and pipe.generator._task is None
    expected = ModelGenerator(model, tok, stored).draw(2, "kde30", seed=3, bandwidth_scale=0.5)[0]
    torch.testing.assert_close(torch.stack([s["latents"] for s in samples]), expected)
    # gauss and neighbours need no bandwidth, so no choice either
    info = {k: v for k, v in anchors.info.items() if not k.startswith("bandwidth")}
    bare = ModelGenerator(model, tok, SamplingAnchors(anchors.latents, anchors.scores, info))
    bare.draw(2, "gauss")
    bare.draw(2, "gauss-fit")
    assert calls == [] and "bandwidth_scale" not in bare.anchors.info


def test_sample_command_prepares_with_the_auto_scale_and_records_it(zoo, checkpoint, tmp_path, capsys):
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint, folder, ignore=shutil.ignore_patterns("sampling", "plain"))
    assert cli(["sample", "--checkpoint", str(folder), "--zoo", str(zoo.path), "--prepare", "--num-samples", "1",
                "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    scale = SamplingAnchors.load(folder).info["bandwidth_scale"]
    assert f"bandwidth scale {scale:g}, chosen by validation accuracy" in out
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["bandwidth_scale"] == scale
    assert cli(["sample", "--checkpoint", str(folder), "--num-samples", "1", "--bandwidth-scale", "wide"]) == 2
    assert "no bandwidth scale; use auto or a number" in capsys.readouterr().err


def test_exploded_validation_and_test_rows_are_scored_not_dropped(zoo, tmp_path):
    """The exploded-checkpoint rule (RMS > 20x the split's median) is for SANE's training data only:
    probe tables score such validation and test rows, and count nothing as left out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "exploded"
    shutil.copytree(zoo.path, folder)
    for split in ("validation", "test"):
        (shard,) = sorted((folder / "data").glob(f"{split}-*.parquet"))
        table = pq.read_table(shard)
        weights = table.column("weights").combine_chunks()
        size = weights.type.list_size
        flat = weights.flatten().to_numpy().copy().reshape(-1, size)
        flat[0] *= 100.0  # finite, RMS 100x the others'
        i = table.schema.get_field_index("weights")
        table = table.set_column(i, table.schema.field(i), pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), size))
        pq.write_table(table, shard)
    exploded = load_zoo(folder)
    from hyperrep_hf.training.data import exploded_rows

    assert exploded_rows(exploded.weights("test"))[0] and exploded_rows(exploded.weights("validation"))[0]
    rows = probe_table(exploded, None, feature_sets=("stats", "weights"), properties=["test_acc"])
    n_test = len(exploded.dataset["test"])
    assert all(r["num_rows"] == n_test and r["left_out"] == 0 for r in rows)
    assert all(np.isfinite(r["value"]) for r in rows)


def test_a_task_mapping_is_loaded_like_a_task_name(zoo, checkpoint, tmp_path, monkeypatch):
    """A zoo's task may be a mapping (a local image data set); the generator loads it, as a name, for
    the bandwidth choice, SUB scoring and BatchNorm conditioning."""
    import hyperrep_hf.zoo.tasks as tasks

    digits, seen = load_task("digits"), []
    monkeypatch.setattr(tasks, "load_task", lambda task: seen.append(task) or digits)
    model, tok = load_checkpoint(checkpoint)
    mapping = {"name": "my-digits", "dataset": "/data/digits"}
    anchors = prepare_sampling(checkpoint, zoo, model=model, tokenizer=tok, progress=False, bandwidth_scale=None,
                               save_to=tmp_path)
    gen = ModelGenerator(model, tok, SamplingAnchors(anchors.latents, anchors.scores, {**anchors.info, "task": mapping}))
    assert gen.task is digits and seen == [mapping]
