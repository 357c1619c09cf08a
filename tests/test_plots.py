import numpy as np
import pytest
from PIL import Image

from hyperrep_hf.plots import (
    pca_2d,
    plot_embedding_space,
    plot_finetuning_curves,
    plot_predicted_vs_true,
    plot_training_curves,
)


def test_pca_2d_finds_the_direction_of_largest_variance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * np.array([10.0, 1.0, 0.1, 0.1, 0.1])
    xy = pca_2d(x)
    assert xy.shape == (200, 2)
    assert np.var(xy[:, 0]) > 10 * np.var(xy[:, 1])  # the first component carries the large axis
    assert abs(np.corrcoef(xy[:, 0], x[:, 0])[0, 1]) > 0.99
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        pca_2d(np.zeros((1, 3)))


def test_plots_write_real_png_files(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8))
    acc = rng.uniform(size=50)
    paths = [
        plot_embedding_space(emb, {"test_acc": acc, "epoch": np.arange(50)}, tmp_path / "emb.png"),
        plot_predicted_vs_true(acc, {"SANE": acc + 0.01, "s(W)": acc[::-1]}, tmp_path / "pred.png"),
        plot_finetuning_curves([0, 1, 5], {"sampled": ([0.8, 0.85, 0.9], [0.01] * 3), "scratch": ([0.1, 0.5, 0.7], [0.02] * 3)}, tmp_path / "ft.png"),
        plot_training_curves([{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}], ["loss"], tmp_path / "train.png"),
    ]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
    assert not list(tmp_path.glob("*.png.tmp*")) and len(list(tmp_path.iterdir())) == 4
