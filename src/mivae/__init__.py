"""mivae: classification of data with missing values by deep generative imputation.

The scikit-learn estimators for tables are importable from here (`from mivae import MIWAEImputer`); they load
torch on first use, so `import mivae` itself stays light.
"""

__version__ = "0.1.0"

__all__ = [
    "MIWAEImputer",
    "MultipleImputationClassifier",
    "NotMIWAEImputer",
    "VAEImputer",
    "load_imputer",
    "__version__",
]

_ESTIMATORS = {"MIWAEImputer", "MultipleImputationClassifier", "NotMIWAEImputer", "VAEImputer", "load_imputer"}


def __getattr__(name):
    if name in _ESTIMATORS:
        from mivae.tables import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'mivae' has no attribute {name!r}")
