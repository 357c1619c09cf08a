import pytest
import torch

from hyperrep_hf.weightspace import additive_noise, block_erasing, multiplicative_noise


def token_batch(batch=8, n_tokens=12, token_size=10, seed=0):
    """Tokens [B, N, T] of nonzero values with ragged padding: sample b has 6 + b % 5 real tokens,
    and the last token of each sample has only 4 real values."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(batch, n_tokens, token_size, generator=g).sign() * (1 + torch.rand(batch, n_tokens, token_size, generator=g))
    mask = torch.zeros(batch, n_tokens, token_size, dtype=torch.bool)
    for b in range(batch):
        real = 6 + b % 5
        mask[b, :real] = True
        mask[b, real - 1, 4:] = False
    return tokens * mask, mask


@pytest.mark.parametrize("augment", [multiplicative_noise, additive_noise])
def test_noise_changes_real_values_only_and_is_reproducible(augment):
    tokens, mask = token_batch()
    original = tokens.clone()
    out = augment(tokens, mask, sigma=0.1, generator=torch.Generator().manual_seed(0))

    assert torch.equal(tokens, original)  # not in place
    assert torch.equal(out[~mask], tokens[~mask])  # padding untouched
    assert (out[mask] != tokens[mask]).all()
    again = augment(tokens, mask, sigma=0.1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    other = augment(tokens, mask, sigma=0.1, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(out, other)


def test_multiplicative_noise_has_the_requested_relative_spread():
    tokens = torch.full((4, 64, 64), 2.0)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    out = multiplicative_noise(tokens, mask, sigma=0.1, generator=torch.Generator().manual_seed(0))
    relative = out / tokens - 1
    assert abs(relative.mean()) < 0.005
    assert abs(relative.std() - 0.1) < 0.005


def test_additive_noise_has_the_requested_spread_and_accepts_a_token_mask():
    tokens = torch.zeros(4, 64, 64)
    token_mask = torch.ones(4, 64, dtype=torch.bool)
    token_mask[:, 60:] = False
    out = additive_noise(tokens, token_mask, sigma=0.2, generator=torch.Generator().manual_seed(0))
    assert abs(out[:, :60].std() - 0.2) < 0.01
    assert (out[:, 60:] == 0).all()


def test_block_erasing_zeroes_one_contiguous_block_of_real_values_in_about_half_the_samples():
    tokens, mask = token_batch(batch=400)
    out = block_erasing(tokens, mask, p=0.5, generator=torch.Generator().manual_seed(0))

    assert torch.equal(out[~mask], tokens[~mask])
    erased_samples = 0
    for b in range(tokens.shape[0]):
        real_in, real_out = tokens[b][mask[b]], out[b][mask[b]]  # real values in order, padding skipped
        zeroed = (real_out == 0).nonzero().flatten()
        if len(zeroed) == 0:
            assert torch.equal(real_out, real_in)
            continue
        erased_samples += 1
        # one contiguous run of 2-33% of the real values; everything else kept
        assert torch.equal(zeroed, torch.arange(zeroed[0], zeroed[-1] + 1))
        fraction = len(zeroed) / len(real_in)
        assert 0.02 - 1 / len(real_in) <= fraction <= 0.33 + 1 / len(real_in)
        keep = real_out != 0
        assert torch.equal(real_out[keep], real_in[keep])
    assert 160 <= erased_samples <= 240


def test_block_erasing_with_p_one_erases_every_sample_and_p_zero_none():
    tokens, mask = token_batch()
    always = block_erasing(tokens, mask, p=1.0, generator=torch.Generator().manual_seed(0))
    assert all((always[b][mask[b]] == 0).any() for b in range(tokens.shape[0]))
    assert torch.equal(block_erasing(tokens, mask, p=0.0), tokens)


def test_bad_shapes_and_settings_are_refused():
    tokens, mask = token_batch()
    with pytest.raises(ValueError, match=r"mask of shape \[8, 12, 3\] fits neither the values \[8, 12, 10\]"):
        multiplicative_noise(tokens, mask[:, :, :3])
    with pytest.raises(ValueError, match="tokens \\[batch, n_tokens, token_size\\]"):
        additive_noise(tokens[0], mask[0])
    with pytest.raises(ValueError, match="0 <= p <= 1"):
        block_erasing(tokens, mask, p=1.5)
