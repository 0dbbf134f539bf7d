"""mivae: classification of data with missing values by deep generative imputation."""

__version__ = "0.1.0"
