"""Downstream uses of a trained SANE checkpoint: embeddings, property probes, sampling new models,
and the result tables that compare them with the baselines.

- embedding: windowed encode / decode of flat weights (`embed_flat`, `encode_flat`, `decode_flat`)
- probes: `ProbeSet` (ridge / linear classifier, penalty chosen on validation), `ridge_path`
- trees: `TreeProbeSet` (gradient-boosted trees on s(W), "stats-gbt", hyperparameters chosen on validation)
- blend: `BlendedProbeSet` (a fine-tuned head and those trees, "sane-finetuned+stats-gbt", the head's weight chosen on validation)
- scores: `r_squared`, `kendall_tau`
- samplers: `KDESampler`, `GaussianSampler`, `neighbour_sampler`, `sub_sample`, `boot_sample`
- generative: `GANSampler`, `DiffusionSampler` (trained on anchor latents by `train_sampler`), `load_sampler`
- generation: `prepare_sampling`, `SamplingAnchors`, `ModelGenerator`, `choose_bandwidth_scale`,
  `train_generative_sampler`, `condition_batchnorm`
- evaluation: `probe_table`, `generation_table`, `finetune_accuracy`, `format_table`
- transfer: models of an architecture in no training zoo and transfer to other tasks
  (`register_unseen`, `choose_normalization`, `sample_neighbours`, `transfer_table`)
"""

import importlib

# Public names -> their module. Loaded on first use (PEP 562): `import hyperrep_hf` registers the
# pipelines, which must not pull in the zoo / datasets / scipy stack on every import.
_EXPORTS = {
    "decode_flat": "embedding",
    "embed_flat": "embedding",
    "encode_flat": "embedding",
    "finetune_accuracy": "evaluation",
    "fit_probes": "evaluation",
    "format_table": "evaluation",
    "generation_table": "evaluation",
    "probe_table": "evaluation",
    "ModelGenerator": "generation",
    "SamplingAnchors": "generation",
    "choose_bandwidth_scale": "generation",
    "condition_batchnorm": "generation",
    "prepare_sampling": "generation",
    "train_generative_sampler": "generation",
    "DiffusionSampler": "generative",
    "GANSampler": "generative",
    "load_sampler": "generative",
    "train_sampler": "generative",
    "PENALTIES": "probes",
    "ProbeSet": "probes",
    "ridge_path": "probes",
    "GaussianSampler": "samplers",
    "KDESampler": "samplers",
    "boot_sample": "samplers",
    "neighbour_sampler": "samplers",
    "sub_sample": "samplers",
    "TreeProbeSet": "trees",
    "kendall_tau": "scores",
    "r_squared": "scores",
    "choose_normalization": "transfer",
    "register_unseen": "transfer",
    "sample_neighbours": "transfer",
    "transfer_table": "transfer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
