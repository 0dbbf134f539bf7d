"""The one exception type that carries a message meant for a user."""


class MivaeError(Exception):
    """A problem with the user's input or environment, described in one sentence.

    The CLI prints the message and exits with status 2; anything else that escapes
    is a bug in mivae and keeps its traceback.
    """


class InputError(MivaeError, ValueError):
    """A bad value, parameter or table given to the Python API: a ValueError to scikit-learn, one sentence to the CLI."""
