"""The `mivae` command: a thin layer over the public Python API, one module per group of commands.

Every command takes --seed; errors a user can fix are one sentence on stderr and exit
status 2.
"""

import sys

from mivae import __version__
from mivae.cli import images, study, tables
from mivae.cli.options import Parser
from mivae.errors import MivaeError, check_interrupt, forget_interrupt, request_interrupt

EXIT_USAGE = 2


def build_parser():
    """Returns the argument parser of the `mivae` command."""
    parser = Parser(
        prog="mivae", description="Classification of data with missing values by deep generative imputation."
    )
    parser.add_argument("--version", action="version", version=f"mivae {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    images.add_commands(commands)
    study.add_commands(commands)
    tables.add_commands(commands)
    return parser


def _on_interrupt(signum, frame):
    request_interrupt()  # remembered where Python would swallow the KeyboardInterrupt below
    raise KeyboardInterrupt


def _unraisable(hook):
    """`sys.unraisablehook` that stays silent about a Ctrl-C raised inside a finaliser or garbage-collection callback:
    Python would print it with a traceback and go on; it is recorded, and raised again at the next check."""

    def quiet(unraisable):
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            hook(unraisable)

    return quiet


def main(argv=None):
    """Runs the `mivae` command; returns its exit status."""
    import signal
    import threading

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _on_interrupt) if in_main_thread else None
    unraisable, sys.unraisablehook = sys.unraisablehook, _unraisable(sys.unraisablehook)
    try:
        args = build_parser().parse_args(argv)
        args.run(args)
        check_interrupt()  # a Ctrl-C swallowed near the end still means the user asked to stop
    except MivaeError as e:
        print(f"mivae: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("mivae: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away, as `mivae data info | head` does
        sys.stdout = None
        return 0
    finally:
        forget_interrupt()
        sys.unraisablehook = unraisable
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
