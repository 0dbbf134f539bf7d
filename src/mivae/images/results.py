"""What evaluating a run gives: one dataclass per kind of model, written as JSON with the keys results have always
had (`to_json`) and read back from it (`from_json`), so readers use fields, never probe for keys.

Every evaluation names the run's kind, the test set (dataset, method, level, seed), its size and the precision
the classification ran in; a model's health (mivae.health) comes as the dict `Health.to_dict` gives, with
"held_out" (false for a model retrained on train + validation).
"""

import dataclasses
from dataclasses import dataclass

from mivae.errors import MivaeError


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """The fields every evaluation has."""

    kind: str
    data: dict  # dataset, method, level and seed of the test set
    test_images: int
    precision: str  # of the classification: bfloat16 or float32

    def to_json(self):
        """Returns the evaluation as JSON-ready values, in field order; optional fields left out while None."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.default is None:
                continue
            out[field.name] = _plain(value)
        return out

    @classmethod
    def from_json(cls, values):
        """Returns the evaluation of this class from `to_json`'s values (keys it does not know are left out); raises
        MivaeError naming the fields it lacks."""
        fields = dataclasses.fields(cls)
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in values] if isinstance(values, dict) else required
        if missing:
            what = values.get("kind", "a model") if isinstance(values, dict) else "a model"
            raise MivaeError(
                f"an evaluation of {what} lacks {', '.join(missing)}: it was written by another version of mivae "
                "or damaged."
            )
        names = {f.name for f in fields}
        return cls(**{k: v for k, v in values.items() if k in names})


def _plain(value):
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, kw_only=True)
class VAEEvaluation(Evaluation):
    """The thesis' VAE: the negative ELBO per image (eq. 2.8) on validation and test images."""

    val_negative_elbo: float
    test_negative_elbo: float
    health: dict


@dataclass(frozen=True, kw_only=True)
class BoundEvaluation(Evaluation):
    """MIWAE or not-MIWAE: the negative importance-weighted bound per image, and the RMSE of the single imputation
    on the missing pixels, on validation and test images."""

    val_negative_bound: float
    val_rmse_missing: float
    test_negative_bound: float
    test_rmse_missing: float
    health: dict | None = None  # not judged for these models


@dataclass(frozen=True, kw_only=True)
class ClassifierEvaluation(Evaluation):
    """A Type 1 classifier on the corrupted test images; one trained on clean images (Tables 6 and 7) also on one
    imputation of them, with the paired test between the two."""

    health: dict
    accuracy: float
    val_accuracy: float
    class_distribution: list
    uncertainty: dict  # NLL, Brier, ECE, coverage (mivae.stats.uncertainty)
    predicted: list  # the predicted class of each test image, for paired tests between evaluations
    accuracy_on_one_vae_imputation: float | None = None
    val_accuracy_on_one_vae_imputation: float | None = None
    predicted_on_one_vae_imputation: list | None = None
    z_imputation_vs_direct: float | None = None


@dataclass(frozen=True, kw_only=True)
class MultipleRow:
    """Multiple imputation with M samples: its accuracy, its paired test against single imputation, its classes."""

    accuracy: float
    z_multi_single: float
    mcnemar_p: float
    class_distribution: list


@dataclass(frozen=True, kw_only=True)
class Type2Evaluation(Evaluation):
    """A Type 2 classifier on the thesis' VAE: single imputation (z = mu) and multiple imputation for each M asked,
    the accuracy for every M up to the largest, and the uncertainty of both (Tables 1, 2, 4, 5, Figures 10-16)."""

    health: dict
    single_accuracy: float
    single_uncertainty: dict
    multiple_uncertainty: dict  # with all of the largest M's samples
    single_class_distribution: list
    true_class_distribution: list
    multiple: dict  # M (int) -> MultipleRow
    z_multi_max_vs_10: float | None = None  # the largest M against M = 10, where both ran
    accuracy_curve: list  # accuracy with m = 1, 2, ... up to the largest M

    @property
    def largest_m(self):
        return max(self.multiple)

    @classmethod
    def from_json(cls, values):
        evaluation = super().from_json(values)
        try:
            rows = {int(m): MultipleRow(**row) for m, row in values["multiple"].items()}
        except (TypeError, ValueError, AttributeError):
            raise MivaeError(
                f"the multiple imputations of an evaluation of {evaluation.kind} are damaged: "
                f"{values['multiple']!r:.80}."
            ) from None
        return dataclasses.replace(evaluation, multiple=rows)


@dataclass(frozen=True, kw_only=True)
class ImportanceWeightedEvaluation(Evaluation):
    """A Type 2 classifier on a MIWAE or not-MIWAE: single imputation, and K imputations averaged with importance
    weights (supMIWAE's p(y | x_obs)) and uniformly (the thesis' way), each a dict of accuracy, uncertainty,
    val_accuracy, class_distribution and predicted, with the paired tests between them."""

    health: dict
    samples: int  # K
    true_class_distribution: list
    single: dict
    importance_weighted: dict
    uniform: dict
    z_weighted_vs_single: float
    z_weighted_vs_uniform: float

    def ways(self):
        """{"single", "importance_weighted", "uniform"}: each way of classifying, a dict of its accuracy, uncertainty,
        val_accuracy, class_distribution and predicted."""
        return {"single": self.single, "importance_weighted": self.importance_weighted, "uniform": self.uniform}
