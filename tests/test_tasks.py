"""Tasks from any image classification data: a task mapping loaded with datasets (local folders here),
registered loaders, zoos built on them that record a task which loads again, and bad input."""

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from hyperrep_hf import SaneConfig, SaneModel, WeightTokenizer
from hyperrep_hf.downstream.generation import ModelGenerator, prepare_sampling
from hyperrep_hf.zoo import build_zoo, load_task, load_zoo
from hyperrep_hf.zoo.spec import ZooSpec
from hyperrep_hf.zoo.tasks import REGISTERED_TASKS, TaskData, register_task


def _images(n, size, mode, seed):
    """n PIL images whose brightness carries the class (label i % 4), so a model can learn them."""
    rng = np.random.default_rng(seed)
    shape = size if mode == "L" else (*size, 3)
    labels = [i % 4 for i in range(n)]
    images = [PILImage.fromarray(np.clip(rng.normal(40 + 50 * y, 10, shape), 0, 255).astype(np.uint8), mode) for y in labels]
    return images, labels


def _dataset(n, size=(8, 8), mode="L", seed=0, label_feature=None, labels=None):
    images, default = _images(n, size, mode, seed)
    features = Features({"picture": Image(), "kind": label_feature or ClassLabel(names=["a", "b", "c", "d"])})
    return Dataset.from_dict({"picture": images, "kind": labels if labels is not None else default}, features=features)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A save_to_disk folder (train + test splits) of 8x8 grey images with a ClassLabel column."""
    folder = tmp_path_factory.mktemp("tasks") / "shapes"
    DatasetDict({"train": _dataset(60, seed=0), "test": _dataset(20, seed=1)}).save_to_disk(str(folder))
    return folder


def _mapping(folder, **extra):
    return {"dataset": str(folder), "image_column": "picture", "label_column": "kind", "name": "shapes", **extra}


def test_a_task_mapping_loads_images_as_normalised_tensors(saved):
    task = load_task(_mapping(saved))
    assert task.name == "shapes" and task.num_classes == 4 and task.input_shape == (1, 8, 8)
    assert (len(task.train_y), len(task.val_y), len(task.test_y)) == (54, 6, 20)
    assert task.train_x.dtype == torch.float32 and task.train_y.dtype == torch.int64
    # scaled like the built-in tasks: pixels / 255, standardised with the training images' statistics
    train = torch.cat([task.train_x, task.val_x])
    assert abs(float(train.mean())) < 1e-4 and abs(float(train.std()) - 1) < 0.02
    raw = np.stack([np.asarray(im, np.float64) / 255 for im in _images(60, (8, 8), "L", 0)[0]])
    expected = (np.asarray(_images(20, (8, 8), "L", 1)[0][3], np.float64) / 255 - raw.mean()) / raw.std()
    torch.testing.assert_close(task.test_x[3, 0].double(), torch.from_numpy(expected), atol=1e-5, rtol=1e-5)
    assert task.test_y.tolist() == [i % 4 for i in range(20)]
    again = load_task(_mapping(saved))
    assert torch.equal(again.train_x, task.train_x) and not torch.equal(load_task(_mapping(saved), seed=1).val_y, task.val_y)


def test_parquet_folder_rgb_resize_held_out_test_split_and_integer_labels(tmp_path):
    folder = tmp_path / "rgb"
    ds = _dataset(40, size=(10, 12), mode="RGB", label_feature=Value("int32"))
    ds.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    task = load_task({"dataset": str(folder), "image_column": "picture", "label_column": "kind", "test_split": None,
                      "image_size": 8, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    assert task.name == "rgb" and task.input_shape == (3, 8, 8) and task.num_classes == 4
    assert len(task.train_y) + len(task.val_y) + len(task.test_y) == 40 and len(task.test_y) == 6
    assert float(task.train_x.min()) >= -2 - 1e-6 and float(task.train_x.max()) <= 2 + 1e-6  # (x/255 - 0.5) / 0.25
    with pytest.raises(ValueError, match=r"no split 'test'; splits: \['train'\]; set test_split.*or null to hold out"):
        load_task({"dataset": str(folder), "image_column": "picture", "label_column": "kind"})


def test_a_zoo_on_a_task_mapping_records_a_task_that_loads_again(saved, tmp_path):
    spec = {"architecture": "cnn-digits", "task": _mapping(saved), "num_models": 3, "epochs": 1,
            "hyperparameters": {"lr": [0.01]}}
    zoo = build_zoo(spec, tmp_path / "zoo", progress=False)
    assert zoo.task["dataset"] == str(saved.resolve()) and zoo.task["name"] == "shapes"
    zoo = load_zoo(zoo.path)  # the recorded task survives the sidecar round trip
    task, original = load_task(zoo.task), load_task(_mapping(saved))
    assert torch.equal(task.test_x, original.test_x) and task.num_classes == 4
    meta = zoo.metadata("train")
    assert (meta["test_acc"][meta["epoch"] == 1] > 0.3).all()  # 4 brightness classes: above chance (0.25) after one epoch
    # sampling loads the zoo's task from what the anchors recorded (BatchNorm conditioning, SUB scoring)
    tok = WeightTokenizer()
    tok.layout_of(zoo.build_model(zoo.weights("train")[0]))
    tok.fit_standardization(zoo.weights("train"))
    model = SaneModel(SaneConfig.from_preset("tiny", token_size=tok.token_size, window_size=16)).eval()
    model.save_pretrained(tmp_path / "ckpt")
    anchors = prepare_sampling(tmp_path / "ckpt", zoo, model=model, tokenizer=tok, progress=False)
    assert ModelGenerator(model, tok, anchors).task.name == "shapes"


def test_registered_tasks_load_by_name_and_zoo_configs_take_them():
    def loader(seed):
        x = torch.randn(30, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
        y = torch.arange(30) % 10
        return TaskData("tiny-random", x[:20], y[:20], x[20:25], y[20:25], x[25:], y[25:], 10)

    register_task("tiny-random", loader)
    try:
        task = load_task("tiny-random", limit=8, seed=3)
        assert task.name == "tiny-random" and len(task.train_y) == 8
        assert torch.equal(task.test_x, loader(3).test_x)
        assert ZooSpec.from_dict({"architecture": "cnn-digits", "task": "tiny-random", "num_models": 3}).task == "tiny-random"
        with pytest.raises(ValueError, match=r"unknown task 'nope'; choose one of \['mnist-5k', 'digits', .*'tiny-random'\]"):
            load_task("nope")
        with pytest.raises(ValueError, match="built-in task"):
            register_task("digits", loader)
        register_task("broken", lambda seed: {"x": 1})
        with pytest.raises(ValueError, match="returned dict, not a TaskData"):
            load_task("broken")
    finally:
        REGISTERED_TASKS.pop("tiny-random", None)
        REGISTERED_TASKS.pop("broken", None)
    with pytest.raises(ValueError, match="unknown task 'tiny-random'"):
        ZooSpec.from_dict({"architecture": "cnn-digits", "task": "tiny-random", "num_models": 3})


def test_bad_task_data_gets_errors_that_name_the_fix(saved, tmp_path):
    with pytest.raises(ValueError, match=r"no column 'image' \(image_column\); its columns: \['picture', 'kind'\]"):
        load_task({"dataset": str(saved), "image_column": "image", "label_column": "kind"})
    with pytest.raises(ValueError, match=r"no column 'label' \(label_column\); its columns: \['picture', 'kind'\]"):
        load_task({"dataset": str(saved), "image_column": "picture", "label_column": "label"})
    with pytest.raises(ValueError, match=r"unknown task mapping keys \['columns'\]"):
        load_task({"dataset": str(saved), "columns": ["picture"]})
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a Hub id"):
        load_task({"dataset": str(tmp_path / "missing"), "image_column": "picture"})
    for name, feature, labels in (("strings", Value("string"), None), ("floats", Value("float32"), [0.5] * 12)):
        folder = tmp_path / name
        labels = labels or [["a", "b"][i % 2] for i in range(12)]
        DatasetDict({"train": _dataset(12, label_feature=feature, labels=labels),
                     "test": _dataset(12, label_feature=feature, labels=labels)}).save_to_disk(str(folder))
        with pytest.raises(ValueError, match=r"label column 'kind' .* not integers or class labels.*class_encode_column"):
            load_task({"dataset": str(folder), "image_column": "picture", "label_column": "kind"})
    mixed = tmp_path / "mixed"
    DatasetDict({"train": _dataset(6, size=(8, 8)), "test": _dataset(6, size=(9, 9))}).save_to_disk(str(mixed))
    with pytest.raises(ValueError, match="differ; set image_size"):
        load_task(_mapping(mixed))
    assert load_task(_mapping(mixed, image_size=[8, 8])).test_x.shape == (6, 1, 8, 8)
