"""The thesis' image pipeline: datasets, corruption, problems, baselines, imputation, run directories, figures."""
