"""Pipelines, registered with transformers on `import hyperrep_hf`:

    pipeline("weight-embedding", model=CHECKPOINT)            # one embedding per model
    pipeline("weight-property-prediction", model=CHECKPOINT)  # {zoo column: predicted value}
    pipeline("weight-generation", model=CHECKPOINT)           # new working models
"""

from transformers import AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from .weight_embedding import WeightEmbeddingPipeline
from .weight_generation import WeightGenerationPipeline
from .weight_property_prediction import WeightPropertyPredictionPipeline

PIPELINES = {
    "weight-embedding": WeightEmbeddingPipeline,
    "weight-property-prediction": WeightPropertyPredictionPipeline,
    "weight-generation": WeightGenerationPipeline,
}

for _task, _cls in PIPELINES.items():
    PIPELINE_REGISTRY.register_pipeline(_task, pipeline_class=_cls, pt_model=AutoModel, type="multimodal")

__all__ = ["PIPELINES", "WeightEmbeddingPipeline", "WeightGenerationPipeline", "WeightPropertyPredictionPipeline"]
