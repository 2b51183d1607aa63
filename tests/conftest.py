"""Shared test settings: the cache of quick trained runs lives inside the checkout, and every
session says where it ran.

`minirlhf.app.pipeline.quick_run` trains tiny runs once and reuses them; pointing its cache at
`.cache/quick-runs` keeps a test session from writing into the home directory, and lets the
notebooks executed by the tests (which inherit this environment) reuse the same runs.

A training run's numbers depend on the CPU's float kernels, so the session's first line names
the CPU, NumPy and the BLAS library and kernel in use (threadpoolctl): a failure on another
machine can be traced to its kernel (`benchmarks/robustness.py` sweeps two of them).
"""
import os
import platform
from pathlib import Path

import numpy as np

os.environ.setdefault("MINIRLHF_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "quick-runs"))


def pytest_sessionstart(session):
    if hasattr(session.config, "workerinput"):      # a pytest-xdist worker: the controller prints it
        return
    from threadpoolctl import threadpool_info
    blas = ", ".join(f"{lib['internal_api']} {lib['version']} kernel {lib.get('architecture')} "
                     f"threads {lib['num_threads']}" for lib in threadpool_info() if lib["user_api"] == "blas")
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"cpu: {cpu_model()}; numpy {np.__version__}; blas: {blas or 'unknown'}"
                            + (f"; OPENBLAS_CORETYPE={coretype}" if coretype else ""))


def cpu_model():
    """The CPU's model name: /proc/cpuinfo on Linux, else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The tests run with glibc's allocator tuned, as the command line runs (importing minirlhf never tunes it).
from minirlhf.engine.kernels import tune_allocator  # noqa: E402

tune_allocator()
