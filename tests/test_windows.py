"""Windows over token sequences: random windows for training, sliding windows with a halo for inference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperrep_hf.tokenization_weights import WeightTokenizer
from hyperrep_hf.windows import (
    Window,
    random_window,
    random_window_starts,
    sliding_windows,
    take_windows,
    window_encoding,
)
from hyperrep_hf.zoo import build_model


def test_random_window_cuts_the_same_tokens_from_two_views():
    tok = WeightTokenizer(token_size=32)
    model = build_model("cnn-l")
    view1, view2 = tok(model), tok(model)
    view2["tokens"] = view2["tokens"] * 1.1  # e.g. noise on the second view
    window = random_window(view1["tokens"].shape[1], 16, generator=torch.Generator().manual_seed(3))
    w1, w2 = window_encoding(view1, window), window_encoding(view2, window)
    assert w1["tokens"].shape == (1, 16, 32) and w1["positions"].shape == (1, 16, 3)
    assert w1["value_mask"].shape == (1, 16, 32) and w1["attention_mask"].shape == (1, 16)
    assert torch.equal(w1["positions"], w2["positions"])
    assert torch.equal(w1["positions"][0, :, 0], torch.arange(window.start, window.stop))
    assert torch.equal(w1["layout_id"], view1["layout_id"])
    same = random_window(view1["tokens"].shape[1], 16, start=window.start)
    assert same == window


def test_random_window_shapes_and_bounds():
    g = torch.Generator().manual_seed(0)
    starts = {random_window(100, 10, generator=g).start for _ in range(300)}
    assert min(starts) >= 0 and max(starts) <= 90 and len(starts) > 50
    assert random_window(5, 10) == Window(0, 5, 0, 5)  # shorter than the window: the whole sequence
    with pytest.raises(ValueError, match="out of range 0..90"):
        random_window(100, 10, start=95)
    with pytest.raises(ValueError, match="window_size must be at least 1"):
        random_window(100, 0)


def test_per_row_windows_stay_inside_each_rows_real_tokens():
    lengths = torch.tensor([50, 20, 8])
    starts = random_window_starts(lengths, 10, generator=torch.Generator().manual_seed(1))
    assert (starts >= 0).all() and (starts + 10 <= lengths.clamp(min=10)).all() and starts[2] == 0
    x = torch.arange(3 * 50 * 2).view(3, 50, 2)
    mask = (torch.arange(50) < lengths[:, None]).long()
    w = take_windows(x, starts, 10)
    assert w.shape == (3, 10, 2)
    assert torch.equal(w[0], x[0, starts[0]:starts[0] + 10])
    assert take_windows(mask, starts, 10)[2].tolist() == [1] * 8 + [0] * 2
    enc = window_encoding({"tokens": x.float(), "attention_mask": mask}, starts, 10)
    assert enc["tokens"].shape == (3, 10, 2)
    short = take_windows(x[:, :6], torch.zeros(3, dtype=torch.long), 10)
    assert (short[:, 6:] == 0).all()


def test_sliding_windows_with_halo():
    windows = sliding_windows(1000, 256, halo=64)
    assert all(w.stop - w.start == 256 for w in windows)
    assert [w.keep_start for w in windows[:3]] == [0, 128, 256]
    middle = windows[2]
    assert (middle.start, middle.stop) == (256 - 64, 256 + 128 + 64)
    assert middle.keep == slice(64, 192)
    assert windows[-1].stop == 1000 and windows[-1].keep_stop == 1000
    with pytest.raises(ValueError, match="halo must be in 0..127"):
        sliding_windows(1000, 256, halo=128)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 700), size=st.integers(1, 300), halo=st.integers(0, 100))
def test_sliding_windows_keep_every_token_exactly_once(n, size, halo):
    if size - 2 * halo < 1:
        return
    windows = sliding_windows(n, size, halo)
    kept = torch.cat([torch.arange(n)[w.slice][w.keep] for w in windows])
    assert torch.equal(kept, torch.arange(n))
    for w in windows:
        assert w.stop - w.start == min(size, n)
        assert w.keep_start - w.start >= halo or w.start == 0
        assert w.stop - w.keep_stop >= halo or w.stop == n
