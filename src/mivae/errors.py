"""The one exception type that carries a message meant for a user."""


class MivaeError(ValueError):
    """A problem with the user's input or environment, described in one sentence.

    The CLI prints the message and exits with status 2; to the Python API it is a ValueError, as
    scikit-learn and most libraries raise for a bad argument. Anything else that escapes is a bug
    in mivae and keeps its traceback.
    """


class InputError(MivaeError):
    """A bad value, parameter or table given to a scikit-learn estimator or a table function."""
