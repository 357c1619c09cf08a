"""hyperrep_hf: hyper-representations (SANE) of neural network weights, the Hugging Face way.

Importing the package registers its Auto classes and pipelines with transformers.
"""

import os as _os

# Tokenizing a large model fills a fresh buffer (62 MB for ResNet-18) and on CPU most of that time
# is page faults; transparent huge pages in torch's CPU allocator halve tokenize + decode
# (BENCHMARKS.md). torch reads this once, at its own import: it takes effect when hyperrep_hf is
# imported before torch. Set THP_MEM_ALLOC_ENABLE=0 to opt out.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# SANE model: registered with the Auto classes so AutoConfig/AutoModel load "sane" checkpoints.
from transformers import AutoConfig as _AutoConfig
from transformers import AutoFeatureExtractor as _AutoFeatureExtractor
from transformers import AutoModel as _AutoModel

from .configuration_sane import SaneConfig
from .hub import push_checkpoint
from .layout import WeightEntry, WeightLayout
from .modeling_sane import (
    AutoModelForWeightPropertyPrediction,
    SaneForPropertyPrediction,
    SaneModel,
    SaneOutput,
)
from .tokenization_weights import LayerSpec, WeightTokenizer

_AutoConfig.register("sane", SaneConfig, exist_ok=True)
_AutoModel.register(SaneConfig, SaneModel, exist_ok=True)
# The weight tokenizer is a feature extractor (preprocessor_config.json). Not registered for remote
# code: a class with "Tokenizer" in its name breaks transformers' remote-code saver (STACK.md).
_AutoFeatureExtractor.register(SaneConfig, WeightTokenizer, exist_ok=True)

# Pipelines "weight-embedding", "weight-property-prediction", "weight-generation" (registers on import).
from . import pipelines  # noqa: E402, F401

__version__ = "0.1.0"

__all__ = ["AutoModelForWeightPropertyPrediction", "LayerSpec", "SaneConfig", "SaneForPropertyPrediction", "SaneModel", "SaneOutput", "WeightEntry", "WeightLayout", "WeightTokenizer", "__version__",
           "push_checkpoint"]
