"""For subprocesses of the tests that run the real OpenOOD on a CPU-only machine: the package's own shims (what
OpenOOD's import needs, and ``.cuda()`` as a no-op without CUDA) for the whole process."""
import contextlib

from openood_diffood.openood.compat import cuda_calls_stay_put, install_import_shims

_HELD = contextlib.ExitStack()


def install() -> None:
    install_import_shims()
    _HELD.enter_context(cuda_calls_stay_put())  # held until the process ends
