"""Helpers shared by the weight-space tests."""

import torch
from torch import nn


def randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, BatchNorm affine parameters and running statistics included, so a
    permutation that forgets a BatchNorm tensor changes the function."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.5, generator=g)
                m.bias.normal_(0.0, 0.5, generator=g)
                m.running_mean.normal_(0.0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
            elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                m.bias.normal_(0.0, 0.1, generator=g)
    return model.eval()
