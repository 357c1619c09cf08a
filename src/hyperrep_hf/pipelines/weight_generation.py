"""`pipeline("weight-generation", model=CHECKPOINT)`: new working models from a SANE checkpoint.

    pipe = pipeline("weight-generation", model="checkpoints/sane-digits")
    samples = pipe(num_samples=5, method="kde30", seed=0)
    samples[0]["model"]        # nn.Module of the zoo's architecture, BatchNorm conditioned, eval mode
    samples[0]["state_dict"]

The checkpoint folder must hold sampling anchors (`hyperrep sample --prepare`, or
downstream.generation.prepare_sampling). Methods: "kde30", "sub", "boot", "gauss" (N(0, 10^2)), "gauss-fit", "neighbours"
(pass prompt models as the first argument), "gan" and "diffusion" (samplers trained on the anchors:
`hyperrep sample --train-samplers gan diffusion`), "sub-gan" and "sub-diffusion" (SUB over their draws). Stages: preprocess draws latents, _forward decodes them
into tokens with the SANE decoder, postprocess de-standardises them into weights and builds models.

`allow_unseen=True` with method="neighbours" samples around prompt nn.Modules of an architecture
the checkpoint was not trained on (downstream.transfer: the prompts' own normalisation, samples
built as copies of their prompt module); `positions="clamp"` as in weight-embedding. A `task_data`
whose inputs the anchors' architecture cannot take is refused.
"""

from __future__ import annotations

import torch
from transformers import Pipeline

from ..downstream.embedding import decode
from ..downstream.generation import (
    ModelGenerator,
    SamplingAnchors,
    check_num_samples,
    checkpoint_revision,
)
from ..downstream.transfer import (
    check_position_policy,
    check_task_fits,
    clamp_positions,
    draw_neighbours,
    models_from_flat,
)

_DRAW_OPTIONS = ("num_draws", "rounds", "bandwidth", "bandwidth_scale", "spread")


class WeightGenerationPipeline(Pipeline):
    """Sample models. `anchors=` (SamplingAnchors) and `task_data=` (TaskData or task name, for
    BatchNorm conditioning and SUB/BOOT scoring) override what the checkpoint folder stores."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = True
    _load_tokenizer = False

    def __init__(self, *args, anchors: SamplingAnchors | None = None, task_data=None, **kwargs):
        # Not `task`: transformers passes the pipeline's own task name under that keyword.
        self._anchors, self._task, self._generator = anchors, task_data, None
        super().__init__(*args, **kwargs)
        if self.feature_extractor is None:
            raise ValueError("this pipeline needs the checkpoint's WeightTokenizer (preprocessor_config.json)")

    @property
    def generator(self) -> ModelGenerator:
        if self._generator is None:
            anchors = self._anchors or SamplingAnchors.load(self.model.name_or_path, checkpoint_revision(self.model))
            generator = ModelGenerator(self.model, self.feature_extractor, anchors, self._task)
            if self._task is not None and generator.buildable:  # a target task of another input shape
                from ..zoo.architectures import build_model

                info = anchors.info
                check_task_fits(build_model(info["architecture"], **info.get("architecture_kwargs", {})), generator.task,
                                f"the anchors' {info['architecture']} models")
            self._generator = generator
        return self._generator

    def __call__(self, prompts=None, **kwargs):
        """pipe(num_samples=k, method="kde30", seed=0) -> k dicts {"model", "state_dict", "latents"
        (, "score")}. `prompts` (models / state_dicts / flat vectors) are for method="neighbours"."""
        kwargs.setdefault("num_samples", 1)
        return super().__call__({"prompts": prompts}, **kwargs)

    def _sanitize_parameters(self, num_samples=None, method=None, seed=None, condition_bn=None, allow_unseen=None,
                             positions=None, **kwargs):
        pre, post = {}, {}
        if allow_unseen is not None:
            pre["allow_unseen"] = bool(allow_unseen)
        if positions is not None:
            pre["positions"] = check_position_policy(positions)
        if num_samples is not None:
            pre["num_samples"] = check_num_samples(num_samples)
        if method is not None:
            pre["method"] = method
        if seed is not None:
            pre["seed"] = post["seed"] = int(seed)
        if condition_bn is not None:
            post["condition_bn"] = bool(condition_bn)
        unknown = set(kwargs) - set(_DRAW_OPTIONS)
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}; weight-generation takes num_samples, method, seed, "
                             f"condition_bn, allow_unseen, positions, {', '.join(_DRAW_OPTIONS)}")
        pre.update(kwargs)
        return pre, {}, post

    def preprocess(self, request, num_samples=1, method="kde30", seed=0, allow_unseen=False, positions="refuse",
                   **draw_options):
        gen = self.generator
        prompts = request.get("prompts")
        mismatch = self._anchor_mismatch(prompts) if method == "neighbours" and prompts is not None else None
        if mismatch:
            if not allow_unseen:
                raise ValueError(f"{mismatch}: the prompt models are not {gen.anchors.info.get('architecture')} models "
                                 "like the anchors; pass allow_unseen=True to sample around models of an architecture "
                                 "the checkpoint was not trained on (their own normalisation, downstream.transfer)")
            return self._unseen_inputs(prompts, num_samples, seed, positions, draw_options.get("spread", 0.1))
        latents, scores = gen.draw(num_samples, method, seed, request.get("prompts"), **draw_options)
        positions = gen.tokenizer.layouts[gen.layout_id].positions.unsqueeze(0).expand(len(latents), -1, -1)
        inputs = {"latents": latents, "positions": positions}
        if scores is not None:
            inputs["scores"] = scores
        return inputs

    def _forward(self, model_inputs):
        tokens = decode(self.model, model_inputs["latents"], model_inputs["positions"])
        return {**model_inputs, "tokens": tokens}

    def _anchor_mismatch(self, prompts) -> str | None:
        """Why prompt models (modules / state_dicts) are not of the anchors' architecture; None if they are
        (flat vectors are checked by the generator)."""
        from torch import nn

        layout = self.generator.layout
        for p in prompts if isinstance(prompts, (list, tuple)) else [prompts]:
            if isinstance(p, nn.Module):
                p = p.state_dict()
            try:
                layout.match(p) if isinstance(p, dict) else None
            except ValueError as err:
                return str(err)
        return None

    def _unseen_inputs(self, prompts, num_samples, seed, positions, spread) -> dict:
        from torch import nn

        prompts = list(prompts) if isinstance(prompts, (list, tuple)) else [prompts]
        if not all(isinstance(p, nn.Module) for p in prompts):
            raise ValueError("sampling an unseen architecture builds the samples as copies of their prompt: pass the "
                             "prompts as nn.Modules")
        latents, which, stats, layout_id = draw_neighbours(self.model, self.feature_extractor, prompts, num_samples,
                                                           spread, seed, positions=positions)
        tl = self.feature_extractor.layouts[layout_id]
        pos = tl.positions.unsqueeze(0).expand(len(latents), -1, -1)
        if positions == "clamp":
            pos = clamp_positions(pos, self.model.config.max_positions)
        return {"latents": latents, "positions": pos,
                "unseen": {"layout_id": layout_id, "which": which, "token_stats": stats, "prompts": prompts}}

    def postprocess(self, model_outputs, seed=0, condition_bn=True):
        gen = self.generator
        if "unseen" in model_outputs:
            return self._unseen_items(model_outputs, seed, condition_bn)
        flat = gen.tokenizer.decode_flat(model_outputs["tokens"].float().cpu(), layout_id=gen.layout_id)
        return gen.items(flat, model_outputs["latents"].cpu(), model_outputs.get("scores"), condition_bn, seed)

    def _unseen_items(self, model_outputs, seed, condition_bn) -> list[dict]:
        from ..downstream.generation import condition_batchnorm, has_batchnorm

        unseen = model_outputs["unseen"]
        tok = self.feature_extractor
        flat = tok.decode_flat(model_outputs["tokens"].float().cpu(), layout_id=unseen["layout_id"],
                               token_stats=unseen["token_stats"])
        models = models_from_flat(unseen["prompts"], unseen["which"], flat, tok.layouts[unseen["layout_id"]].weights)
        out = []
        for i, m in enumerate(models):
            if condition_bn and has_batchnorm(m):
                condition_batchnorm(m, self.generator.task.train_x, generator=torch.Generator().manual_seed(int(seed) + 1))
            out.append({"model": m, "state_dict": m.state_dict(), "latents": model_outputs["latents"][i].cpu().clone()})
        return out
