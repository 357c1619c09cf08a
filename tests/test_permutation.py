import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from hyperrep_hf import WeightLayout
from hyperrep_hf.weightspace import (
    PermutationSpec,
    permutation_spec,
    permute_flat,
    permute_state_dict,
    random_permutation,
    spec_from_sequential,
)
from hyperrep_hf.zoo import build_model
from weight_helpers import randomised

# (architecture, build kwargs, input shape)
ZOO_MODELS = [
    ("mlp", {}, (4, 1, 28, 28)),
    ("cnn-s", {}, (4, 1, 28, 28)),
    ("cnn-l", {}, (4, 3, 32, 32)),
    ("cnn-digits", {}, (4, 1, 8, 8)),
    ("vgg-s", {}, (4, 3, 32, 32)),
    ("resnet18", {}, (2, 3, 32, 32)),
]


@pytest.mark.parametrize("arch,kwargs,input_shape", ZOO_MODELS, ids=[a for a, _, _ in ZOO_MODELS])
def test_random_permutation_keeps_the_function_and_changes_the_weights(arch, kwargs, input_shape):
    model = randomised(build_model(arch, **kwargs))
    permuted = random_permutation(model, generator=torch.Generator().manual_seed(1)).eval()

    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(x) - permuted(x)).abs().max() < 1e-5

    before, after = model.state_dict(), permuted.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "the permutation changed no weight"
    # the outputs of the last layer are never permuted
    last_bias = [k for k in before if k.endswith("bias")][-1]
    assert torch.equal(before[last_bias], after[last_bias])


def test_resnet_spec_ties_the_residual_stream_across_blocks():
    spec = permutation_spec(build_model("resnet18", width=8))
    stem = {(a.entry, a.axis) for a in spec.groups["stem"].axes}
    # stem output, both layer1 blocks' outputs and their inputs are one permutation
    assert {("conv1.weight", 0), ("bn1.running_var", 0), ("layer1.0.bn2.weight", 0), ("layer1.1.conv2.weight", 0),
            ("layer1.0.conv1.weight", 1), ("layer2.0.shortcut.0.weight", 1)} <= stem
    res2 = {(a.entry, a.axis) for a in spec.groups["layer2.residual"].axes}
    assert {("layer2.0.shortcut.0.weight", 0), ("layer2.0.shortcut.1.bias", 0), ("layer2.1.bn2.weight", 0)} <= res2
    assert {(a.entry, a.axis) for a in spec.groups["layer1.0.conv1"].axes} >= {("layer1.0.bn1.weight", 0), ("layer1.0.conv2.weight", 1)}
    assert ("linear.weight", 1) in {(a.entry, a.axis) for a in spec.groups["layer4.residual"].axes}
    spec.check(WeightLayout.from_state_dict(build_model("resnet18", width=8).state_dict()))


def test_linear_after_flatten_permutes_blocks_of_columns():
    spec = permutation_spec(build_model("cnn-s"))
    # conv "8" has 4 channels of 3x3: FC "11" reads 36 columns, 9 per channel
    assert spec.groups["8"].size == 4
    assert ("11.weight", 1, 9) in {(a.entry, a.axis, a.block) for a in spec.groups["8"].axes}


def test_derived_spec_equals_a_hand_written_one_and_survives_serialisation():
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    by_hand = PermutationSpec({"0": (7, [("0.weight", 0), ("0.bias", 0), ("2.weight", 1)])})
    assert spec_from_sequential(model) == by_hand
    assert PermutationSpec.from_dict(by_hand.to_dict()) == by_hand


def test_a_zoo_batch_is_permuted_with_one_gather_and_one_permutation_per_model():
    models = [randomised(build_model("cnn-s"), seed=s) for s in range(5)]
    layout = WeightLayout.from_state_dict(models[0].state_dict())
    spec = permutation_spec(models[0])
    flat = layout.flatten_many([m.state_dict() for m in models])  # [M, P]

    perms = spec.random(num_models=5, generator=torch.Generator().manual_seed(0))  # group -> [M, n]
    batch = permute_flat(flat, layout, spec, perms)
    for i, model in enumerate(models):
        one = {g: p[i] for g, p in perms.items()}
        expected = permute_state_dict(model.state_dict(), spec, one)
        assert torch.equal(batch[i], layout.flatten(expected))
    assert not torch.equal(batch[0] - flat[0], batch[1] - flat[1])

    # the convenience form: a fresh permutation per row, the function of every row unchanged
    permuted = random_permutation(flat, spec, layout=layout, generator=torch.Generator().manual_seed(3))
    x = torch.randn(3, 1, 28, 28)
    clone = build_model("cnn-s").eval()
    for row, model in zip(permuted, models):
        clone.load_state_dict(layout.unflatten(row))
        with torch.no_grad():
            assert (clone(x) - model(x)).abs().max() < 1e-5

    # a single permutation [n] shared by all rows
    shared = permute_flat(flat, layout, spec, {g: p[0] for g, p in perms.items()})
    assert torch.equal(shared[0], batch[0])


def test_state_dict_permutation_keeps_integer_buffers():
    model = randomised(build_model("vgg-s"))
    spec = permutation_spec(model)
    sd = random_permutation(model.state_dict(), spec, generator=torch.Generator().manual_seed(0))
    assert sd["1.num_batches_tracked"].dtype == torch.long
    assert list(sd) == list(model.state_dict())


def test_a_spec_that_does_not_fit_names_the_entry_and_axis():
    layout = WeightLayout.from_state_dict(build_model("cnn-s").state_dict())
    wrong_size = PermutationSpec({"h": (9, [("0.weight", 0)])})
    with pytest.raises(ValueError, match=r"'h'.*size 9.*axis 0 of '0.weight'.*\[8, 1, 5, 5\]"):
        wrong_size.check(layout)
    with pytest.raises(ValueError, match="'fc.weight', which is not a float entry"):
        PermutationSpec({"h": (8, [("fc.weight", 0)])}).check(layout)
    with pytest.raises(ValueError, match="axis 4 of '0.weight'"):
        PermutationSpec({"h": (8, [("0.weight", 4)])}).check(layout)
    with pytest.raises(ValueError, match="two permutation groups"):
        PermutationSpec({"a": (8, [("0.weight", 0)]), "b": (8, [("0.weight", 0)])})


def test_bad_permutations_are_refused():
    model = build_model("mlp")
    spec = permutation_spec(model)
    sd = model.state_dict()
    with pytest.raises(ValueError, match="no permutation given for group '4'"):
        permute_state_dict(sd, spec, {"1": torch.arange(32)})
    with pytest.raises(ValueError, match="group '1' is not a permutation"):
        permute_state_dict(sd, spec, {"1": torch.zeros(32, dtype=torch.long), "4": torch.arange(32)})
    with pytest.raises(ValueError, match="needs a spec"):
        random_permutation(sd)
    with pytest.raises(ValueError, match="need their layout"):
        random_permutation(torch.zeros(10), spec)


@pytest.mark.parametrize(
    "model,culprit",
    [
        (nn.Sequential(nn.Linear(4, 6), nn.Softmax(dim=1), nn.Linear(6, 2)), r"'1' \(Softmax\)"),
        (nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 2, 1)), r"'0' \(Conv2d\).*grouped"),
        (nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2)), r"'1' \(LayerNorm\)"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Linear(4, 2)), r"'2' \(Linear\).*without a Flatten"),
    ],
)
def test_models_the_derivation_cannot_handle_ask_for_an_explicit_spec(model, culprit):
    with pytest.raises(ValueError, match=culprit + ".*pass an explicit PermutationSpec"):
        permutation_spec(model)


def test_an_unknown_model_class_asks_for_an_explicit_spec():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

    with pytest.raises(ValueError, match="Net.*pass an explicit PermutationSpec"):
        permutation_spec(Net())


@st.composite
def sequential_stacks(draw):
    """Random nn.Sequential CNN/MLP stacks: conv blocks (optional BatchNorm, pooling), Flatten,
    Linear blocks; returns (model, input shape)."""
    channels, side = draw(st.integers(1, 3)), draw(st.sampled_from([6, 8]))
    input_shape = (2, channels, side, side)
    layers: list[nn.Module] = []
    c = channels
    for _ in range(draw(st.integers(0, 2))):
        out = draw(st.integers(2, 6))
        layers.append(nn.Conv2d(c, out, 3, padding=1, bias=draw(st.booleans())))
        if draw(st.booleans()):
            layers.append(nn.BatchNorm2d(out))
        layers.append(draw(st.sampled_from([nn.ReLU, nn.Tanh, nn.GELU]))())
        if draw(st.booleans()) and side >= 4:
            layers.append(nn.MaxPool2d(2))
            side //= 2
        c = out
    layers.append(nn.Flatten())
    width = c * side * side
    for _ in range(draw(st.integers(1, 3))):
        out = draw(st.integers(2, 7))
        layers += [nn.Linear(width, out, bias=draw(st.booleans())), nn.Sigmoid(), nn.Dropout(0.1)]
        width = out
    layers.append(nn.Linear(width, 3))
    return nn.Sequential(*layers), input_shape


@settings(max_examples=30, deadline=None)
@given(stack=sequential_stacks(), seed=st.integers(0, 2**16))
def test_random_permutation_keeps_the_function_of_random_sequential_stacks(stack, seed):
    model, input_shape = stack
    model = randomised(model, seed)
    permuted = random_permutation(model, generator=torch.Generator().manual_seed(seed)).eval()
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        assert (model(x) - permuted(x)).abs().max() < 1e-5
