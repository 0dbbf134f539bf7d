"""What evaluating a run gives: one dataclass per kind of model, written as JSON with the keys results have always
had (`to_json`) and read back from it (`from_json`), so readers use fields, never probe for keys.

Every evaluation names the run's kind, the test set (dataset, method, level, seed), its size and the precision
the classification ran in; a model's health (mivae.health) comes as the dict `Health.to_dict` gives, with
"held_out" (false for a model retrained on train + validation).
"""

import dataclasses
import functools
import typing
from dataclasses import dataclass

from mivae import readback
from mivae.errors import MivaeError
from mivae.health import SHAPE as HEALTH_SHAPE
from mivae.images.data import SHAPES


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
        kept = {k: v for k, v in values.items() if k in names}
        problem = readback.mismatch(kept, _shape(cls), "the evaluation")
        if problem:
            raise MivaeError(f"an evaluation of {values.get('kind', 'a model')!r:.40} is damaged: {problem}.")
        return cls(**kept)


# The shape (mivae.readback) of a field's value in JSON, from its type; a health verdict has its own.
_FIELD_SHAPES = {
    float: readback.NUMBER,
    int: readback.WHOLE,
    str: str,
    bool: bool,
    dict: readback.Map(readback.ANY),
    list: [readback.ANY],
}


_SHAPES: dict = {}  # _shape's, by class: each computed once


def _shape(cls):
    """The shape of the values of an evaluation of class `cls`, every field optional (`from_json` names those a
    class requires)."""
    if cls not in _SHAPES:
        shape = {}
        for name, tp in typing.get_type_hints(cls).items():
            inner = [a for a in typing.get_args(tp) if a is not type(None)]
            field = HEALTH_SHAPE if name == "health" else _FIELD_SHAPES.get(inner[0] if inner else tp, readback.ANY)
            shape[name] = readback.Optional(readback.Either(None, field) if inner else field)
        _SHAPES[cls] = shape
    return _SHAPES[cls]


def check_content(values, where, setting=None, extra=None):
    """Returns the JSON values of an evaluation after checking that every field is one an evaluation has, of its
    type (`extra`: other fields allowed, a dict of their shapes), that they describe one test set of a dataset
    mivae has (and `setting`, (method, level), where given), and that what they say of its images fits it: every
    list of predicted classes has one class per test image, every class distribution one count per class, and
    every accuracy lies in [0, 1]. Raises MivaeError naming `where` (the file) otherwise."""
    lacking = [k for k in ("kind", "data", "test_images") if k not in values] if isinstance(values, dict) else None
    fields = {**_every_field(), **(extra or {})}
    problem = readback.mismatch(values, fields) or (f"it lacks {', '.join(lacking)}" if lacking else None)
    if problem:
        raise MivaeError(f"{where} is damaged: {problem}.")
    data = values["data"]
    if setting is not None and (data["method"], data["level"]) != setting:
        raise MivaeError(
            f"{where} holds the results of {data['method']} at {data['level']}, not of {setting[0]} at {setting[1]}: "
            "it was moved or damaged."
        )
    (_, classes), images = SHAPES[data["dataset"]], values["test_images"]
    shape: object
    for path, value in readback.walk(values):
        name = str(path[-1]) if path else ""
        if name.startswith("predicted") and value is not None:  # the class of each test image
            shape, size, of = [readback.whole(0, classes - 1)], images, "test images"
        elif name.endswith("class_distribution"):  # the images predicted (or labelled) as each class
            shape, size, of = [readback.whole(0, images)], classes, "classes"
        elif name == "accuracy_curve":  # the accuracy with 1, 2, ... imputations
            shape, size, of = [_ACCURACY], None, None
        elif "accuracy" in name and not isinstance(value, (dict, list)) and value is not None:
            shape, size, of = _ACCURACY, None, None
        else:
            continue
        at = ".".join(map(str, path))
        problem = readback.mismatch(value, shape, at)
        if problem is None and size is not None and len(value) != size:
            problem = f"{at} has {len(value)} entries for {size} {of}"
        if problem:
            raise MivaeError(f"{where} is damaged: {problem}.")
    return values


_ACCURACY = readback.Check("an accuracy in [0, 1]", lambda v: readback.FINITE.test(v) and 0 <= v <= 1)


@functools.cache
def _every_field():
    """The shape of every field an evaluation of any kind may hold, each optional."""
    shape, classes = {}, [Evaluation]
    while classes:
        cls = classes.pop()
        shape.update(_shape(cls))
        classes += cls.__subclasses__()
    shape["data"] = readback.Optional(
        {
            "dataset": readback.Check(f"one of {', '.join(SHAPES)}", lambda v: isinstance(v, str) and v in SHAPES),
            "method": str,
            "level": readback.FINITE,
            "seed": readback.WHOLE,
        }
    )
    shape["test_images"] = readback.Optional(readback.whole(1))
    return shape


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
