"""hyperrep_hf: hyper-representations (SANE) of neural network weights, the Hugging Face way.

Importing the package registers its Auto classes and pipelines with transformers.
"""

from .layout import WeightEntry, WeightLayout

__version__ = "0.1.0"

__all__ = ["WeightEntry", "WeightLayout", "__version__"]
