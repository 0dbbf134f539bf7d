"""The one exception type that carries a message meant for a user, the checks of values that raise it, and the
user's request to stop."""

import math
import numbers
import threading


class MivaeError(ValueError):
    """A problem with the user's input or environment, described in one sentence.

    The CLI prints the message and exits with status 2; to the Python API it is a ValueError, as
    scikit-learn and most libraries raise for a bad argument. Anything else that escapes is a bug
    in mivae and keeps its traceback.
    """


class InputError(MivaeError):
    """A bad value, parameter or table given to a scikit-learn estimator or a table function."""


def _listed(options):
    """Joins what a value may be into one phrase: "a, b or c"."""
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + " or " + options[-1]


def _alternatives(first, also):
    """The phrase for a value or the exceptions `also` allows: "a whole number of at least 1, 'auto' or None"."""
    return _listed([first, *map(repr, also)])


def _allowed(value, also):
    """Whether `value` is one of the exceptions `also` allows: None by identity, a string by equality."""
    return any(value is a or isinstance(value, str) and value == a for a in also)  # never compares an array


def check_whole(name, value, low=0, also=(), error=MivaeError, high=None):
    """Returns `value` if it is a whole number (a bool is not one) of at least `low` (and at most `high`, where
    given), or one of the values `also` allows (such as "auto" or None); raises `error` naming `name` and what it
    accepts otherwise."""
    if _allowed(value, also):
        return value
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < low
        or (high is not None and value > high)
    ):
        what = f"a whole number of at least {low}" if high is None else f"a whole number from {low} to {high:,}"
        raise error(f"{name} must be {_alternatives(what, also)}; got {value!r}.")
    return value


def check_choice(name, value, choices, error=MivaeError):
    """Returns `value` if it is one of `choices` (strings); raises `error` naming them otherwise."""
    if not isinstance(value, str) or value not in choices:
        raise error(f"{name} must be {_listed(choices)}; got {value!r}.")
    return value


def check_number(name, value, low, high, low_open=True, high_open=False, also=(), error=MivaeError):
    """Returns `value` if it is a real number (not NaN, not a bool) in the interval from `low` to `high`, open or
    closed at each end as given, or one of the values `also` allows; raises `error` otherwise."""
    if _allowed(value, also):
        return value
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise error(f"{name} must be {_alternatives(f'a number in {interval}', also)}; got {value!r}.")
    return value


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
