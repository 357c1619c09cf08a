import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from hyperrep_hf import WeightLayout
from hyperrep_hf.weightspace import (
    align,
    align_checkpoints,
    permutation_spec,
    permute_flat,
    random_permutation,
)
from hyperrep_hf.zoo import build_model
from weight_helpers import randomised


@pytest.mark.parametrize("arch,kwargs", [("cnn-s", {}), ("vgg-s", {}), ("resnet18", {"width": 8})])
def test_a_permuted_copy_aligns_back_to_the_original_exactly(arch, kwargs):
    torch.manual_seed(0)
    original = randomised(build_model(arch, **kwargs))
    permuted = random_permutation(original, generator=torch.Generator().manual_seed(1))

    aligned, perms = align(permuted, original)

    assert set(perms) == set(permutation_spec(original).groups)
    for name, tensor in original.state_dict().items():
        assert torch.equal(aligned.state_dict()[name], tensor), name


def test_flat_weights_align_with_their_layout():
    original = build_model("cnn-s")
    spec = permutation_spec(original)
    layout = WeightLayout.from_state_dict(original.state_dict())
    reference = layout.flatten(original.state_dict())
    shuffled = random_permutation(reference, spec, layout=layout, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(shuffled, reference)

    aligned, _ = align(shuffled, reference, spec, layout=layout)
    assert torch.equal(aligned, reference)


def test_all_checkpoints_of_a_model_follow_the_permutation_of_its_last_one():
    model = build_model("cnn-s")
    spec = permutation_spec(model)
    layout = WeightLayout.from_state_dict(model.state_dict())
    final = layout.flatten(model.state_dict())
    # three "epochs" on the way to the final weights, then the whole run seen through a permutation
    epochs = torch.stack([final + 0.3 * torch.randn_like(final), final + 0.1 * torch.randn_like(final), final])
    perms = spec.random(generator=torch.Generator().manual_seed(0))
    run = permute_flat(epochs, layout, spec, perms)

    aligned, found = align_checkpoints(run, final, layout, spec)

    assert torch.equal(aligned, epochs)
    assert aligned.shape == (3, layout.num_weights)
    assert not torch.equal(permute_flat(run, layout, spec, found), run)


def _train_mlp_on_digits(seed: int, x: torch.Tensor, y: torch.Tensor, steps: int = 30) -> nn.Module:
    """Full-batch Adam on scikit-learn's digits: about 95% training accuracy in a second."""
    torch.manual_seed(seed)
    model = build_model("mlp", in_features=64, hidden=(32, 32))
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices this small train faster on one thread, above all on a busy machine
    try:
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def test_aligning_two_independently_trained_models_lowers_their_distance_and_keeps_the_function():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    a, b = _train_mlp_on_digits(0, x, y), _train_mlp_on_digits(1, x, y)
    with torch.no_grad():
        assert (a(x).argmax(1) == y).float().mean() > 0.9  # both actually learned the task
        assert (b(x).argmax(1) == y).float().mean() > 0.9

    layout = WeightLayout.from_state_dict(a.state_dict())
    wa, wb = layout.flatten(a.state_dict()), layout.flatten(b.state_dict())

    b_aligned, _ = align(b, a)

    distance_before = (wb - wa).norm()
    distance_after = (layout.flatten(b_aligned.state_dict()) - wa).norm()
    assert distance_after < 0.9 * distance_before
    with torch.no_grad():
        assert (b_aligned(x) - b(x)).abs().max() < 1e-5


def test_models_of_different_architectures_cannot_be_aligned():
    small, large = build_model("cnn-s"), build_model("cnn-s", in_channels=3)
    with pytest.raises(ValueError, match=r"different layouts: entry '0.weight' \[8, 3, 5, 5\] vs reference '0.weight' \[8, 1, 5, 5\]"):
        align(large, small)
    with pytest.raises(ValueError, match="need their layout"):
        align(torch.zeros(2464), small)
    with pytest.raises(ValueError, match="needs a spec"):
        align(small.state_dict(), small.state_dict())
