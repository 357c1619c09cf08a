import numpy as np
import pytest
import torch

from hyperrep_hf import WeightLayout
from hyperrep_hf.weightspace import STATISTICS, statistics_names, weight_statistics
from hyperrep_hf.zoo import build_model


def test_statistics_of_a_hand_example_match_numpy():
    layout = WeightLayout([("fc.weight", (2, 3)), ("fc.bias", (2,))])
    flat = torch.tensor(
        [
            [1.0, 2.0, 3.0, 4.0, 5.0, 10.0, -1.0, 1.0],
            [0.5, -0.5, 0.0, 2.0, 8.0, -3.0, 7.0, 7.0],
        ]
    )
    features, names = weight_statistics(flat, layout)

    assert names[:7] == [f"fc.weight/{s}" for s in ("mean", "var", "p1", "p25", "p50", "p75", "p99")]
    assert names[7] == "fc.bias/mean"
    assert features.shape == (2, 14)
    for row in range(2):
        for name, part in (("fc.weight", flat[row, :6].numpy()), ("fc.bias", flat[row, 6:].numpy())):
            expected = [part.mean(), part.var(), *np.percentile(part, [1, 25, 50, 75, 99])]
            got = features[row, names.index(f"{name}/mean") : names.index(f"{name}/mean") + 7].numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # e.g. the weights of model 0 are 1..5, 10: median 3.5, population variance 8.5833
    assert features[0, names.index("fc.weight/p50")] == pytest.approx(3.5)
    assert features[0, names.index("fc.weight/var")] == pytest.approx(np.var([1, 2, 3, 4, 5, 10]))


def test_a_zoo_batch_gives_one_row_per_model_and_chunking_changes_nothing():
    models = [build_model("cnn-s") for _ in range(20)]
    layout = WeightLayout.from_state_dict(models[0].state_dict())
    flat = layout.flatten_many([m.state_dict() for m in models])

    features, names = weight_statistics(flat, layout)
    assert features.shape == (20, 7 * len(layout)) and len(names) == features.shape[1]
    assert names == statistics_names(layout)
    single, _ = weight_statistics(flat[3], layout)
    torch.testing.assert_close(single, features[3])
    chunked, _ = weight_statistics(flat, layout, max_elements=1000)
    torch.testing.assert_close(chunked, features)

    weights = flat[7, : 8 * 25].numpy().astype(np.float64)  # "0.weight" of model 7
    np.testing.assert_allclose(features[7, :7].numpy(), [weights.mean(), weights.var(), *np.percentile(weights, [1, 25, 50, 75, 99])], rtol=1e-5, atol=1e-7)
    assert STATISTICS == ("mean", "var", "p1", "p25", "p50", "p75", "p99")


def test_flat_weights_of_another_size_are_refused():
    layout = WeightLayout([("w", (4,))])
    with pytest.raises(ValueError, match=r"P = 4, got shape \[2, 5\]"):
        weight_statistics(torch.zeros(2, 5), layout)
