"""Weight-space operations: permutation symmetries, alignment, token augmentations, s(W) statistics."""

from .alignment import align, align_checkpoints, weight_matching
from .augment import additive_noise, block_erasing, multiplicative_noise
from .permutation import (
    PermutationGroup,
    PermutationSpec,
    PermutedAxis,
    permutation_spec,
    permute_flat,
    permute_model,
    permute_state_dict,
    random_permutation,
    spec_for_resnet,
    spec_from_sequential,
)
from .statistics import STATISTICS, statistics_names, weight_statistics

__all__ = [
    "STATISTICS",
    "PermutationGroup",
    "PermutationSpec",
    "PermutedAxis",
    "additive_noise",
    "align",
    "align_checkpoints",
    "block_erasing",
    "multiplicative_noise",
    "permutation_spec",
    "permute_flat",
    "permute_model",
    "permute_state_dict",
    "random_permutation",
    "spec_for_resnet",
    "spec_from_sequential",
    "statistics_names",
    "weight_matching",
    "weight_statistics",
]
