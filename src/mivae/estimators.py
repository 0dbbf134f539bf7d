"""The scikit-learn estimators for tables, kept importable here: they live in mivae.tables.estimators."""

from mivae.tables.estimators import (
    MIWAEImputer,
    MultipleImputationClassifier,
    NotMIWAEImputer,
    VAEImputer,
    load_imputer,
)

__all__ = ["MIWAEImputer", "MultipleImputationClassifier", "NotMIWAEImputer", "VAEImputer", "load_imputer"]
