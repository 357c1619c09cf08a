"""Windows over token sequences: random windows for training, sliding windows for whole-model inference.

SANE trains on random contiguous windows of a model's token sequence, so memory does not grow with
the model; to embed or reconstruct a whole long model it slides windows over the sequence,
optionally with a halo: each window sees `halo` context tokens on both sides of the part it keeps.

Encodings are the tokenizer's BatchFeature (or any dict) with per-token tensors shaped
[batch, n_tokens, ...]: tokens, positions, attention_mask, value_mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["Window", "random_window", "random_window_starts", "sliding_windows", "take_windows", "window_encoding"]

PER_TOKEN_KEYS = ("tokens", "positions", "attention_mask", "value_mask")


@dataclass(frozen=True)
class Window:
    """Tokens [start, stop) go into the model; only [keep_start, keep_stop) of its output is kept."""

    start: int
    stop: int
    keep_start: int
    keep_stop: int

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)

    @property
    def keep(self) -> slice:
        """The kept part, relative to the window's own start."""
        return slice(self.keep_start - self.start, self.keep_stop - self.start)


def random_window(num_tokens: int, window_size: int, generator: torch.Generator | None = None,
                  start: int | None = None) -> Window:
    """A random contiguous window of `window_size` tokens (the whole sequence if it is shorter).

    Pass the same `start` (or a generator in the same state) to cut the SAME window from two views.
    """
    _check_sizes(num_tokens, window_size)
    size = min(window_size, num_tokens)
    last = num_tokens - size
    if start is None:
        start = int(torch.randint(last + 1, (1,), generator=generator))
    elif not 0 <= start <= last:
        raise ValueError(f"window start {start} is out of range 0..{last} for {num_tokens} tokens and "
                         f"window_size {window_size}")
    return Window(start, start + size, start, start + size)


def random_window_starts(lengths: torch.Tensor, window_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random window start per sequence of a padded batch: lengths [B] (real tokens per row,
    e.g. attention_mask.sum(1)) -> starts [B] int64, each window inside its row's real tokens
    (start 0 where a row is shorter than the window)."""
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    if window_size < 1:
        raise ValueError(f"window_size must be at least 1, got {window_size}")
    room = (lengths - window_size).clamp(min=0) + 1
    return (torch.rand(lengths.shape, generator=generator) * room).long().clamp(max=room - 1)


def take_windows(x: torch.Tensor, starts: torch.Tensor, window_size: int) -> torch.Tensor:
    """x [B, N, ...], starts [B] -> [B, window_size, ...]: row b's tokens starts[b] .. +window_size.

    Rows shorter than the window are padded with zeros (and so is their attention_mask, when x is one).
    """
    B, N = x.shape[:2]
    idx = torch.as_tensor(starts, dtype=torch.long).view(B, 1) + torch.arange(window_size).view(1, -1)
    inside = idx < N
    out = x.gather(1, idx.clamp(max=N - 1).view(B, window_size, *([1] * (x.dim() - 2))).expand(B, window_size, *x.shape[2:]))
    if not inside.all():
        out = out * inside.view(B, window_size, *([1] * (x.dim() - 2))).to(out.dtype)
    return out


def window_encoding(encoding: Mapping, window: Window | slice | torch.Tensor, window_size: int | None = None) -> dict:
    """Cut a window out of every per-token tensor of an encoding (other keys are kept as they are).

    `window`: a Window or slice (the same tokens for every row) or starts [B] with `window_size`
    (a window per row, as from random_window_starts).
    """
    out = {}
    for key, value in encoding.items():
        if key not in PER_TOKEN_KEYS or value is None:
            out[key] = value
        elif isinstance(window, (Window, slice)):
            out[key] = value[:, window.slice if isinstance(window, Window) else window]
        else:
            if window_size is None:
                raise ValueError("per-row window starts need window_size")
            out[key] = take_windows(value, window, window_size)
    return out


def sliding_windows(num_tokens: int, window_size: int, halo: int = 0) -> list[Window]:
    """Windows of `window_size` tokens whose kept centres (window_size - 2 * halo tokens each) cover
    every token exactly once, in order.

    Each kept part has at least `halo` tokens of context on each side, except at the ends of the
    sequence, where the window is shifted inwards so that every window still holds `window_size`
    tokens (fewer only when the whole sequence is shorter). E.g. window_size 256, halo 64: a
    128-token content block with 64 context tokens either side.
    """
    _check_sizes(num_tokens, window_size)
    if halo < 0 or window_size - 2 * halo < 1:
        raise ValueError(f"halo must be in 0..{(window_size - 1) // 2} for window_size {window_size}, got {halo}")
    content = window_size - 2 * halo
    windows = []
    for keep_start in range(0, num_tokens, content):
        keep_stop = min(keep_start + content, num_tokens)
        start = min(max(keep_start - halo, 0), max(num_tokens - window_size, 0))
        windows.append(Window(start, min(start + window_size, num_tokens), keep_start, keep_stop))
    return windows


def _check_sizes(num_tokens: int, window_size: int) -> None:
    if num_tokens < 1:
        raise ValueError(f"the sequence is empty (num_tokens={num_tokens})")
    if window_size < 1:
        raise ValueError(f"window_size must be at least 1, got {window_size}")
