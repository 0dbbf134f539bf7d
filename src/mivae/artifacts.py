"""Files on disk: atomic writes, and reading a weights file as one sentence when it fails.

A temporary's name carries its writer's host and process id: .NAME.HOST-PID-RANDOM.part. A process
killed mid-write (SIGKILL, a power cut) leaves it behind; `remove_stale_temporaries` removes those whose
writer, on this host, is gone, and never touches a live writer's, nor one from another host.
"""

import contextlib
import os
import re
import socket
import tempfile
from pathlib import Path

from safetensors import SafetensorError

from mivae.errors import MivaeError

_TEMPORARY = re.compile(r"^\..+\.(?P<host>[^.]+)-(?P<pid>\d+)-[^-]*\.part$")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it onto `path` only on success.

    The caller writes the whole file to the temporary path. If the block raises, the
    temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_host()}-{os.getpid()}-", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # the rename must not overtake the data on disk
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a written file gets the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(folder):
    """Removes the temporaries below `folder` left by writers on this host that no longer run; returns how many."""
    host, removed = _host(), 0
    for path in Path(folder).rglob(".*.part"):
        match = _TEMPORARY.match(path.name)
        if match and match["host"] == host and not _running(int(match["pid"])):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


def _host():
    return socket.gethostname().replace(".", "_")  # a dotted host name would blur the temporary's name


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_writable_folder(folder):
    """Raises MivaeError unless `folder` is, or could be made, a folder this process can write in; creates nothing.

    Called before long work, so that a bad output path costs a sentence, not a training run.
    """
    from mivae.errors import MivaeError

    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise MivaeError(f"cannot write to {folder}: {existing} is a file, not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MivaeError(f"cannot write to {folder}: {existing} is not writable.")


@contextlib.contextmanager
def weights_read(weights, missing, error=MivaeError):
    """Runs the reading of the safetensors file `weights` in its block, turning a failure into one sentence:
    `missing` where the file does not exist, "damaged or not a safetensors file" for anything else it cannot read."""
    try:
        yield
    except FileNotFoundError:
        raise error(missing) from None
    except (SafetensorError, OSError, ValueError) as e:
        raise error(f"{weights} is damaged or not a safetensors file ({e}).") from None
