"""SANE losses checked against hand computations with explicit loops."""

import math

import pytest
import torch

from hyperrep_hf.losses import masked_reconstruction_mse, nt_xent, sane_loss


def test_masked_mse_counts_only_real_values():
    rec = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 9.0]]])
    target = torch.tensor([[[1.5, 2.0, 1.0], [1.0, 0.0, -9.0]]])
    mask = torch.tensor([[[True, True, True], [True, True, False]]])
    # real errors: 0.5, 0, 2, 1, 0 -> squares 0.25 + 0 + 4 + 1 + 0 over 5 values
    assert masked_reconstruction_mse(rec, target, mask).item() == pytest.approx(5.25 / 5)


def test_masked_mse_with_layer_sigma_divides_each_tokens_error():
    torch.manual_seed(0)
    rec, target = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.rand(2, 3, 4) > 0.3
    sigma = torch.tensor([[0.5, 2.0, 1e-9], [1.0, 3.0, 0.25]])
    total, count = 0.0, 0
    for b in range(2):
        for n in range(3):
            s = max(sigma[b, n].item(), 1e-4)  # floored
            for t in range(4):
                if mask[b, n, t]:
                    total += ((rec[b, n, t].item() - target[b, n, t].item()) / s) ** 2
                    count += 1
    got = masked_reconstruction_mse(rec, target, mask, sigma).item()
    assert got == pytest.approx(total / count, rel=1e-5)


def test_masked_mse_rejects_empty_mask_and_shape_mismatch():
    with pytest.raises(ValueError, match="no real values"):
        masked_reconstruction_mse(torch.zeros(1, 2, 3), torch.ones(1, 2, 3), torch.zeros(1, 2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="same shape"):
        masked_reconstruction_mse(torch.zeros(1, 2, 3), torch.ones(1, 2, 4), torch.ones(1, 2, 3, dtype=torch.bool))


def _nt_xent_by_hand(z1, z2, tau):
    views = []
    for row in torch.cat([z1, z2]).tolist():
        norm = math.sqrt(sum(x * x for x in row))
        views.append([x / norm for x in row])
    batch = len(z1)

    def sim(a, b):
        return sum(x * y for x, y in zip(a, b)) / tau

    total = 0.0
    for i in range(2 * batch):
        positive = (i + batch) % (2 * batch)
        denominator = sum(math.exp(sim(views[i], views[j])) for j in range(2 * batch) if j != i)
        total += -math.log(math.exp(sim(views[i], views[positive])) / denominator)
    return total / (2 * batch)


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_nt_xent_matches_simclr_by_hand(tau):
    torch.manual_seed(1)
    z1, z2 = torch.randn(3, 5), torch.randn(3, 5)
    assert nt_xent(z1, z2, tau).item() == pytest.approx(_nt_xent_by_hand(z1, z2, tau), rel=1e-5)


def test_nt_xent_is_low_when_views_agree_and_others_differ():
    z = torch.eye(4)
    agree = nt_xent(z, z, 0.1)
    disagree = nt_xent(z, z.roll(1, dims=0), 0.1)
    assert agree.item() < 1e-3 < disagree.item()


def test_nt_xent_rejects_bad_input():
    with pytest.raises(ValueError, match="one shape"):
        nt_xent(torch.zeros(3, 4), torch.zeros(2, 4), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.ones(2, 4), torch.ones(2, 4), 0.0)


def test_gamma_combination():
    c, r = torch.tensor(2.0), torch.tensor(10.0)
    assert sane_loss(c, r, 0.05).item() == pytest.approx(0.05 * 2 + 0.95 * 10)
    assert sane_loss(c, r, 0.0).item() == pytest.approx(10.0)
    with pytest.raises(ValueError, match="gamma"):
        sane_loss(c, r, 1.5)


def test_masked_mse_without_mask_is_the_plain_mean():
    torch.manual_seed(2)
    rec, target = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    everything = torch.ones(2, 3, 4, dtype=torch.bool)
    assert masked_reconstruction_mse(rec, target, None).item() == pytest.approx(
        masked_reconstruction_mse(rec, target, everything).item(), rel=1e-6
    )
