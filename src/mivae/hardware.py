"""The machine: which device runs the work, which precision is fast on it, and how many threads to use.

bf16 matmuls are about 10x faster than float32 on CPUs with AMX or AVX-512 BF16, but are
emulated, and hundreds of times slower, on CPUs without them. `resolve_precision("auto")`
picks bf16 only where the hardware supports it; "bf16" and "fp32" force either.
"""

import contextlib
import ctypes
import functools
import os
import time

import torch

from mivae.errors import MivaeError

PRECISIONS = ("auto", "bf16", "fp32")


def check_device(device):
    """Returns `device` as a name mivae runs on (auto, cpu, cuda or cuda:N), or raises MivaeError in one sentence.

    Whether the device is present is `resolve_device`'s question: a run trained on a GPU can be read anywhere."""
    if device == "auto":
        return device
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise MivaeError(f"device {device!r} is not a device; expected auto, cpu, cuda or cuda:N.") from None
    if parsed.type not in ("cpu", "cuda"):
        raise MivaeError(f"device {device!r} is not one mivae runs on; expected auto, cpu, cuda or cuda:N.")
    return str(parsed)


def resolve_device(device="auto"):
    """Returns the torch.device that `device` names: "auto" is the GPU where torch sees one, else the CPU.

    A GPU asked for by name must be there: nothing falls back to the CPU. A GPU comes back with its index
    ("cuda" is torch's current one, cuda:0 on most machines), so that a study's unit keys name one device
    one way however it was asked for."""
    name = check_device(str(device) if isinstance(device, torch.device) else device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    parsed = torch.device(name)
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise MivaeError(
                f"device {name!r} is not available: this torch sees no GPU (a CPU build of torch, or no driver)."
            )
        if parsed.index is not None and parsed.index >= count:
            raise MivaeError(
                f"device {name!r} is not available: this torch sees {count} GPU(s), cuda:0 to cuda:{count - 1}."
            )
        if parsed.index is None:
            parsed = torch.device("cuda", torch.cuda.current_device())
    return parsed


def synchronize(device):
    """Waits until `device` has run all the work queued on it (a GPU runs asynchronously; a CPU has nothing to wait
    for): timings are taken after it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cores():
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_supported(device="cpu"):
    """Returns whether `device` runs bf16 matmuls natively (a CPU with AMX or AVX-512 BF16, or a GPU)."""
    device = torch.device(device)
    if device.type == "cuda":  # Ampere (compute capability 8) and later; earlier GPUs emulate it, slowly
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        # oneDNN also says yes on AVX-512 CPUs that only emulate bf16; ask for the instructions.
        return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})
    return False


def steady_heap(threshold=64 << 20, keep=256 << 20):
    """Fixes glibc's mmap threshold at `threshold` bytes and lets the heap keep up to `keep` free bytes at its
    top; returns whether it could (False off glibc).

    glibc raises the threshold to the size of every large block freed, after which blocks of
    tens of MB come from the heap and fragment it: a VAE+MLP's multiple imputation of 10,000
    MNIST images x 3,000 samples, after the single-imputation passes of 4,096 images, grew by
    about 4.5 GB a minute until the kernel killed it at 24 GB. With the threshold fixed at
    64 MiB it stays near 1.1 GB, as fast (docs/reproduction.md).

    A fixed threshold also turns off glibc's own raising of the trim threshold, which then stays at
    128 KiB: the free memory at the heap's top can go back to the system after every training step and
    be faulted in again at the next one. Keeping it made a bf16 training step of the CNN 1.15x as fast
    (docs/reproduction.md, "Time"); `release_free_memory` still returns it.
    """
    libc = _glibc()
    return bool(libc and libc.mallopt(-3, threshold) and libc.mallopt(-1, keep))  # M_MMAP_ and M_TRIM_THRESHOLD


def release_free_memory():
    """Returns the heap's free pages to the system (glibc's malloc_trim); returns whether any went back.

    Inside `mivae reproduce` a long multiple imputation still grew by about 1 GB a minute with the
    threshold of `steady_heap` fixed; the loop that grows without it stayed near 0.95 GB when trimmed
    every second (docs/reproduction.md).
    """
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0))


@functools.cache
def _glibc():
    """The C library if it is glibc (which has mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def resolve_precision(precision="auto", device="cpu"):
    """Returns the torch dtype for matmuls: bfloat16 or float32, as `precision` asks and the hardware allows."""
    if precision not in PRECISIONS:
        raise MivaeError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}.")
    if precision == "bf16" or (precision == "auto" and bf16_supported(device)):
        return torch.bfloat16
    return torch.float32


def measure_threads(size=1024, repeats=5):
    """Returns the thread count, from 1 to the number of cores, that runs a float32 matmul fastest.

    On a loaded or hyper-threaded machine fewer threads than cores can win; the caller
    sets it once with `torch.set_num_threads`.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    before = torch.get_num_threads()
    best, best_time = 1, float("inf")
    try:
        for threads in range(1, cores() + 1):
            torch.set_num_threads(threads)
            torch.mm(a, b)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                torch.mm(a, b)
                times.append(time.perf_counter() - start)
            median = sorted(times)[len(times) // 2]
            if median < best_time * 0.95:  # more threads must win clearly
                best, best_time = threads, median
    finally:
        torch.set_num_threads(before)
    return best


@contextlib.contextmanager
def torch_threads(threads):
    """Runs the block with torch using `threads` CPU threads, then restores the count it had."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
