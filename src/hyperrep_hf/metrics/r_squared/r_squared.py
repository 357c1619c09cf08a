"""R^2 (coefficient of determination) as a local `evaluate` metric: 1 - MSE / Var(references)."""

import datasets
import evaluate

from hyperrep_hf.downstream.scores import r_squared

_DESCRIPTION = "Coefficient of determination R^2 = 1 - MSE / Var(references), as used for linear probes of model zoos."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of float, the predicted values.
    references: list of float, the true values.
Returns:
    r_squared: float, 1.0 for a perfect fit, 0.0 for predicting the mean, negative when worse.
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RSquared(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        return {"r_squared": r_squared(references, predictions)}
