"""The study of the thesis' §4 and beyond it: model search, the matrix of cached units, the report."""
