"""The one exception type that carries a message meant for a user, and the user's request to stop."""

import threading


class MivaeError(ValueError):
    """A problem with the user's input or environment, described in one sentence.

    The CLI prints the message and exits with status 2; to the Python API it is a ValueError, as
    scikit-learn and most libraries raise for a bad argument. Anything else that escapes is a bug
    in mivae and keeps its traceback.
    """


class InputError(MivaeError):
    """A bad value, parameter or table given to a scikit-learn estimator or a table function."""


# Ctrl-C, remembered: Python drops a KeyboardInterrupt raised inside a garbage-collector callback (SQLAlchemy's
# run after every search trial), so the CLI's handler also sets this, and long loops check it between steps.
_interrupted = threading.Event()


def request_interrupt():
    """Records that the user asked to stop (the CLI's SIGINT handler calls it)."""
    _interrupted.set()


def forget_interrupt():
    """Clears a recorded request to stop, once it has been acted on."""
    _interrupted.clear()


def check_interrupt():
    """Raises KeyboardInterrupt if the user asked to stop, even where the first one was swallowed."""
    if _interrupted.is_set():
        raise KeyboardInterrupt
