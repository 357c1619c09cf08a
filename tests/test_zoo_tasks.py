"""Task data: built-in mnist-5k and digits, and the Hub loaders run against local parquet files."""

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image

from hyperrep_hf.zoo import load_task


def test_mnist_5k_is_real_mnist_with_a_fixed_split():
    task = load_task("mnist-5k")
    assert task.input_shape == (1, 28, 28) and task.num_classes == 10
    assert (len(task.train_y), len(task.val_y), len(task.test_y)) == (4000, 500, 500)
    assert torch.bincount(task.train_y, minlength=10).min() > 300  # every digit is there
    again = load_task("mnist-5k")
    assert torch.equal(task.test_x, again.test_x) and torch.equal(task.train_y, again.train_y)
    assert not torch.equal(load_task("mnist-5k", seed=1).test_y, task.test_y)


def test_digits_and_a_training_subset():
    task = load_task("digits", limit=100)
    assert task.input_shape == (1, 8, 8) and len(task.train_y) == 100 and len(task.test_y) == 270
    x, y = task.split("validation")
    assert x.shape == (270, 1, 8, 8) and y.dtype == torch.int64


def _image_folder(root, mode, size, n):
    rng = np.random.default_rng(0)
    shape = (size, size) if mode == "L" else (size, size, 3)
    features = Features({"img": Image(), "label": ClassLabel(names=[f"c{i}" for i in range(10)])})
    for split in ("train", "test"):
        images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]
        ds = Dataset.from_dict({"img": images, "label": [i % 10 for i in range(n)]}, features=features)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.mark.parametrize("name,mode,size", [("cifar10", "RGB", 32), ("fashion-mnist", "L", 28)])
def test_hub_tasks_load_through_datasets_from_local_parquet(tmp_path, name, mode, size):
    folder = _image_folder(tmp_path / name, mode, size, 40)
    task = load_task(name, path=str(folder))
    channels = 3 if mode == "RGB" else 1
    assert task.input_shape == (channels, size, size) and task.num_classes == 10
    assert len(task.train_y) + len(task.val_y) == 40 and len(task.test_y) == 40
    assert abs(float(task.train_x.mean())) < 2.0  # normalised, not raw 0..255 pixels


def test_unknown_task_lists_the_valid_names(tmp_path):
    with pytest.raises(ValueError, match=r"unknown task 'imagenet'; choose one of \['mnist-5k', 'digits', 'mnist'"):
        load_task("imagenet")
    (tmp_path / "data").mkdir()
    Dataset.from_dict({"a": [1, 2]}).to_parquet(str(tmp_path / "data" / "train-0.parquet"))
    Dataset.from_dict({"a": [1, 2]}).to_parquet(str(tmp_path / "data" / "test-0.parquet"))
    with pytest.raises(ValueError, match=r"expected an Image column and a label column"):
        load_task("svhn", path=str(tmp_path))
