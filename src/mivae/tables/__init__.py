"""Tables with missing values: column schemas, files in and out, simulated missingness, scikit-learn estimators."""
