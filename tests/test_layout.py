import pytest
import torch

from hyperrep_hf import WeightLayout
from hyperrep_hf.zoo import build_model


def test_flatten_unflatten_is_exact_and_skips_integer_buffers():
    model = build_model("resnet18", width=8)
    sd = model.state_dict()
    for t in sd.values():
        if t.is_floating_point():
            t.normal_()
    layout = WeightLayout.from_state_dict(sd)
    assert not any(n.endswith("num_batches_tracked") for n in layout.names)
    flat = layout.flatten(sd)
    assert flat.shape == (layout.num_weights,)
    back = layout.unflatten(flat)
    for name in layout.names:
        assert torch.equal(back[name], sd[name])


def test_layout_json_round_trip_and_mismatch_errors():
    sd = build_model("cnn-s").state_dict()
    layout = WeightLayout.from_state_dict(sd)
    assert layout.num_weights == 2464
    assert WeightLayout.from_json(layout.to_json()) == layout
    other = build_model("cnn-s", in_channels=3).state_dict()
    with pytest.raises(ValueError, match=r"'0.weight' has shape \[8, 3, 5, 5\].*\[8, 1, 5, 5\]"):
        layout.flatten(other)
    with pytest.raises(ValueError, match="no floating-point tensors"):
        WeightLayout.from_state_dict({})
    with pytest.raises(ValueError, match="expected a flat vector of 2464"):
        layout.unflatten(torch.zeros(5))
