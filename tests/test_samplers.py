"""Latent samplers: joint KDE sampling, GAUSS, neighbours, SUB and BOOT; seeded and reproducible."""

import pytest
import torch

from hyperrep_hf.downstream.samplers import (
    GaussianSampler,
    KDESampler,
    best_fraction,
    boot_sample,
    neighbour_sampler,
    parse_method,
    silverman_bandwidth,
    sub_sample,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_best_fraction_keeps_the_top_anchors():
    anchors = torch.arange(10.0).reshape(10, 1, 1)
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.8, 0.2, 0.7, 0.4, 0.6, 0.0])
    best = best_fraction(anchors, scores, 0.3)
    assert best.flatten().tolist() == [1.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="one score per anchor"):
        best_fraction(anchors, scores[:5], 0.3)


def test_kde_samples_are_joint_draws_not_shared_offsets():
    # Two far-apart clusters of anchors: a proper joint draw lands near ONE anchor in every dimension.
    anchors = torch.tensor([[0.0] * 8, [100.0] * 8])
    s = KDESampler(anchors, bandwidth=1.0).sample(500, _gen())
    assert s.shape == (500, 8)
    near = (s - anchors[:, None]).abs().amax(-1).min(0).values
    assert (near < 6).all()
    # ... and its noise is independent across dimensions (the reference's shared random_state would
    # make the offset identical in every dimension: correlation 1).
    noise = s - torch.where(s.mean(1, keepdim=True) > 50, 100.0, 0.0)
    corr = torch.corrcoef(noise.T)
    assert corr.fill_diagonal_(0).abs().max() < 0.2
    assert noise.std(0).sub(1.0).abs().max() < 0.15


def test_kde_on_sequences_keeps_the_shape_and_is_reproducible():
    anchors = torch.randn(12, 5, 3, generator=_gen(1))
    sampler = KDESampler(anchors)
    assert sampler.bandwidth.shape == (5, 3)
    a, b = sampler.sample(4, _gen(7)), sampler.sample(4, _gen(7))
    assert a.shape == (4, 5, 3)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, sampler.sample(4, _gen(8)))


def test_silverman_bandwidth_shrinks_with_more_anchors():
    few, many = torch.randn(20, 4, generator=_gen(2)), torch.randn(2000, 4, generator=_gen(3))
    assert (silverman_bandwidth(many) < silverman_bandwidth(few)).all()
    assert silverman_bandwidth(torch.ones(5, 3)).abs().max() == 0


def test_bandwidth_scale_multiplies_the_rule_and_boot_keeps_it(monkeypatch):
    anchors = torch.randn(30, 6, generator=_gen(4))
    full, quarter = KDESampler(anchors), KDESampler(anchors, scale=0.25)
    torch.testing.assert_close(quarter.bandwidth, 0.25 * full.bandwidth)
    torch.testing.assert_close(KDESampler(anchors, 2.0, scale=0.5).bandwidth, torch.ones(6))
    # Draws from the same seed pick the same anchors; the noise shrinks by the scale.
    a, b = full.sample(50, _gen(5)), quarter.sample(50, _gen(5))
    nearest = lambda z: (z[:, None] - anchors).norm(dim=-1).min(1).values  # noqa: E731
    assert nearest(b).mean() < 0.4 * nearest(a).mean()
    # BOOT refits Silverman's rule on the kept draws with the same scale.
    seen = []
    original = KDESampler.__init__

    def spy(self, anchors, bandwidth="silverman", scale=1.0):
        seen.append((bandwidth if isinstance(bandwidth, str) else "tensor", scale))
        original(self, anchors, bandwidth, scale)

    monkeypatch.setattr(KDESampler, "__init__", spy)
    boot_sample(quarter, lambda z: -z.norm(dim=1), 5, 20, rounds=3, generator=_gen(6))
    assert seen == [("silverman", 0.25), ("silverman", 0.25)]
    with pytest.raises(ValueError, match="scale must be finite"):
        KDESampler(anchors, scale=-1.0)


def test_gauss_fit_matches_anchor_moments():
    anchors = torch.randn(400, 3, generator=_gen(4)) * torch.tensor([1.0, 2.0, 0.5]) + 3
    s = GaussianSampler.fit(anchors).sample(4000, _gen(5))
    torch.testing.assert_close(s.mean(0), anchors.mean(0), atol=0.15, rtol=0)
    torch.testing.assert_close(s.std(0), anchors.std(0), atol=0.1, rtol=0)


def test_published_gauss_is_n_0_100_whatever_the_anchors():
    # METHOD.md §6: GAUSS draws from N(0, 10^2) in every latent dimension; the anchors play no part.
    s = GaussianSampler.published((5, 3)).sample(4000, _gen(6))
    assert s.shape == (4000, 5, 3)
    assert s.mean(0).abs().max() < 0.6 and (s.std(0) - 10).abs().max() < 0.5
    with pytest.raises(ValueError, match="std must be finite"):
        GaussianSampler(torch.zeros(2), -1.0)


def test_neighbours_stay_near_their_prompts():
    zoo = torch.randn(100, 6, generator=_gen(6))
    prompts = torch.full((2, 6), 5.0)
    prompts[1] = -5
    s = neighbour_sampler(prompts, zoo, spread=0.1).sample(50, _gen(7))
    dist = (s[:, None] - prompts[None]).norm(dim=-1).min(1).values
    assert dist.max() < 1.0
    with pytest.raises(ValueError, match="reference spread"):
        neighbour_sampler(prompts[:1])


def test_sub_keeps_the_best_of_the_draws():
    sampler = KDESampler(torch.randn(30, 4, generator=_gen(8)))
    score = lambda z: -z.norm(dim=1)  # noqa: E731
    latents, scores = sub_sample(sampler, score, num_samples=5, num_draws=50, generator=_gen(9))
    assert latents.shape == (5, 4)
    all_draws = sampler.sample(50, _gen(9))
    best5 = torch.sort(-all_draws.norm(dim=1), descending=True).values[:5]
    torch.testing.assert_close(scores, best5.double())


def test_boot_improves_on_sub():
    sampler = KDESampler(torch.randn(60, 4, generator=_gen(10)) * 3)
    score = lambda z: -(z - 2).norm(dim=1)  # noqa: E731
    _, sub_scores = sub_sample(sampler, score, 5, 40, _gen(11))
    _, boot_scores = boot_sample(sampler, score, 5, 40, rounds=4, generator=_gen(11))
    assert boot_scores.mean() > sub_scores.mean()


def test_bad_requests_name_the_fix():
    sampler = KDESampler(torch.randn(5, 2, generator=_gen(12)))
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            sampler.sample(bad, _gen())
    with pytest.raises(ValueError, match="at least num_samples"):
        sub_sample(sampler, lambda z: z.sum(1), 5, 3)
    assert parse_method("kde30") == ("kde", 0.3)
    assert parse_method("SUB") == ("sub", 0.3)
    assert parse_method("boot50") == ("boot", 0.5)
    assert parse_method("gauss") == ("gauss", 0.3) and parse_method("gauss-fit50") == ("gauss-fit", 0.5)
    with pytest.raises(ValueError, match="unknown sampling method"):
        parse_method("vae")


def test_batchnorm_conditioning_re_estimates_statistics_only():
    from torch import nn

    from hyperrep_hf.downstream.generation import condition_batchnorm, has_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 36, 3))
    with torch.no_grad():  # decoded statistics are garbage
        model[1].running_mean.fill_(100.0)
        model[1].running_var.fill_(1e-3)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    x = torch.randn(256, 1, 8, 8) * 2 + 1
    condition_batchnorm(model, x, num_batches=50, batch_size=64, generator=_gen(0))
    assert not model.training
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v)
    conv = model[0](x).detach()
    torch.testing.assert_close(model[1].running_mean, conv.mean((0, 2, 3)), atol=0.05, rtol=0)
    torch.testing.assert_close(model[1].running_var, conv.var((0, 2, 3)), rtol=0.1, atol=0)
    assert model[1].momentum == 0.1  # restored
    assert has_batchnorm(model) and not has_batchnorm(nn.Linear(2, 2))
