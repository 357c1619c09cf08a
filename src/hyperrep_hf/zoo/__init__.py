"""Model zoos: architectures, task data, population training and zoo datasets."""

from .architectures import (
    ARCHITECTURES,
    build_model,
    init_weights,
    num_parameters,
    register_architecture,
    trust_builder,
)
from .build import build_zoo
from .dataset import Zoo, load_zoo
from .hub import push_zoo
from .importers import FORMATS as IMPORT_FORMATS
from .importers import import_modelzoos, import_zoo
from .population import (
    FunctionalPopulation,
    LoopPopulation,
    StackedPopulation,
    TrainSettings,
    evaluate_accuracy,
    finetune,
    make_population,
    train_population,
)
from .spec import PRESETS, ZooSpec
from .tasks import TASKS, TaskData, load_task, register_task, task_names

__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "TASKS",
    "FunctionalPopulation",
    "LoopPopulation",
    "StackedPopulation",
    "TaskData",
    "TrainSettings",
    "Zoo",
    "ZooSpec",
    "build_model",
    "build_zoo",
    "evaluate_accuracy",
    "finetune",
    "IMPORT_FORMATS",
    "import_modelzoos",
    "import_zoo",
    "init_weights",
    "load_task",
    "register_task",
    "task_names",
    "load_zoo",
    "make_population",
    "num_parameters",
    "push_zoo",
    "register_architecture",
    "trust_builder",
    "train_population",
]
