"""Kendall's rank correlation (tau-b) as a local `evaluate` metric."""

import datasets
import evaluate

from hyperrep_hf.downstream.scores import kendall_tau

_DESCRIPTION = "Kendall's tau-b rank correlation between predictions and references (does the prediction order the models right?)."

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of float, the predicted values.
    references: list of float, the true values.
Returns:
    kendall_tau: float in [-1, 1]; 1 when both order the items the same way.
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class KendallTau(evaluate.Metric):
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
        return {"kendall_tau": kendall_tau(references, predictions)}
