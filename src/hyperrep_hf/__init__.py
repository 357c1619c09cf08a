"""hyperrep_hf: hyper-representations (SANE) of neural network weights, the Hugging Face way.

Importing the package registers its Auto classes and pipelines with transformers.
"""

# SANE model: registered with the Auto classes so AutoConfig/AutoModel load "sane" checkpoints.
from transformers import AutoConfig as _AutoConfig
from transformers import AutoModel as _AutoModel

from .configuration_sane import SaneConfig
from .layout import WeightEntry, WeightLayout
from .modeling_sane import SaneModel, SaneOutput

_AutoConfig.register("sane", SaneConfig, exist_ok=True)
_AutoModel.register(SaneConfig, SaneModel, exist_ok=True)

__version__ = "0.1.0"

__all__ = ["SaneConfig", "SaneModel", "SaneOutput", "WeightEntry", "WeightLayout", "__version__"]
