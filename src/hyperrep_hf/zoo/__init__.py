"""Model zoos: architectures, task data, population training and zoo datasets."""

from .architectures import (
    ARCHITECTURES,
    build_model,
    init_weights,
    num_parameters,
    register_architecture,
)

__all__ = ["ARCHITECTURES", "build_model", "init_weights", "num_parameters", "register_architecture"]
