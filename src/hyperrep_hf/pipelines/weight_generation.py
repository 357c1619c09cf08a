"""`pipeline("weight-generation", model=CHECKPOINT)`: new working models from a SANE checkpoint.

    pipe = pipeline("weight-generation", model="checkpoints/sane-digits")
    samples = pipe(num_samples=5, method="kde30", seed=0)
    samples[0]["model"]        # nn.Module of the zoo's architecture, BatchNorm conditioned, eval mode
    samples[0]["state_dict"]

The checkpoint folder must hold sampling anchors (`hyperrep sample --prepare`, or
downstream.generation.prepare_sampling). Methods: "kde30", "sub", "boot", "gauss" (N(0, 10^2)), "gauss-fit", "neighbours"
(pass prompt models as the first argument). Stages: preprocess draws latents, _forward decodes them
into tokens with the SANE decoder, postprocess de-standardises them into weights and builds models.
"""

from __future__ import annotations

from transformers import Pipeline

from ..downstream.embedding import decode
from ..downstream.generation import (
    ModelGenerator,
    SamplingAnchors,
    check_num_samples,
    checkpoint_revision,
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
            self._generator = ModelGenerator(self.model, self.feature_extractor, anchors, self._task)
        return self._generator

    def __call__(self, prompts=None, **kwargs):
        """pipe(num_samples=k, method="kde30", seed=0) -> k dicts {"model", "state_dict", "latents"
        (, "score")}. `prompts` (models / state_dicts / flat vectors) are for method="neighbours"."""
        kwargs.setdefault("num_samples", 1)
        return super().__call__({"prompts": prompts}, **kwargs)

    def _sanitize_parameters(self, num_samples=None, method=None, seed=None, condition_bn=None, **kwargs):
        pre, post = {}, {}
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
                             f"condition_bn, {', '.join(_DRAW_OPTIONS)}")
        pre.update(kwargs)
        return pre, {}, post

    def preprocess(self, request, num_samples=1, method="kde30", seed=0, **draw_options):
        gen = self.generator
        latents, scores = gen.draw(num_samples, method, seed, request.get("prompts"), **draw_options)
        positions = gen.tokenizer.layouts[gen.layout_id].positions.unsqueeze(0).expand(len(latents), -1, -1)
        inputs = {"latents": latents, "positions": positions}
        if scores is not None:
            inputs["scores"] = scores
        return inputs

    def _forward(self, model_inputs):
        tokens = decode(self.model, model_inputs["latents"], model_inputs["positions"])
        return {**model_inputs, "tokens": tokens}

    def postprocess(self, model_outputs, seed=0, condition_bn=True):
        gen = self.generator
        flat = gen.tokenizer.decode_flat(model_outputs["tokens"].float().cpu(), layout_id=gen.layout_id)
        return gen.items(flat, model_outputs["latents"].cpu(), model_outputs.get("scores"), condition_bn, seed)
