"""Shared fixtures: the repo's paths, the shared data, and a runner for the real CLI in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
MPL_CACHE = str(Path(tempfile.gettempdir()) / "alexnet-tests-matplotlib")
SHARED = Path(os.environ.get("ALEXNET_SHARED", REPO.parent / "shared"))

# One thread per process: the suite already runs one worker per core (-n auto), and torch's threads spin while
# they wait, so two threads per process on a shared core only burn the other worker's time.
os.environ["OMP_NUM_THREADS"] = "1"  # inherited by every CLI subprocess
torch.set_num_threads(1)



# Module-scoped fixtures that train or install (tens of seconds each): with `--dist loadgroup` every test that
# uses one runs on one xdist worker, so the fixture is built once instead of once per worker.
SHARED_FIXTURES = ("sweep", "trained", "single", "checkpoint_bytes", "installed", "reference")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """torch.compile'd combinations last (stable otherwise): in scripts/gpu_acceptance.sh's time box for
    `pytest -m gpu`, every eager test runs before the compilations start. Then each test that uses a
    SHARED_FIXTURES fixture joins that fixture's xdist group (tryfirst: xdist reads the groups in this hook)."""
    items.sort(key=lambda item: "compile" in item.name)
    for item in items:
        shared = [name for name in SHARED_FIXTURES if name in item.fixturenames]
        if shared:
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{shared[0]}"))


class FailureLog:
    """Each failure's traceback appended to a file as it happens: scripts/gpu_acceptance.sh's time box can kill
    pytest (mid-compilation) before its end-of-run report."""

    def __init__(self, path: str):
        self.path = path

    def pytest_runtest_logreport(self, report):
        if report.failed:
            # when, and the exception that ended the test (its first line): the runner tells the deadline's
            # SIGINT (an in-process run's exit 130 after it) from a failure
            crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", "") or ""
            with open(self.path, "a") as out:
                out.write(f"===== {report.nodeid} ({report.when})\nat: {time.time():.3f}\n"
                          f"crash: {crash.partition(chr(10))[0]}\n{report.longreprtext}\n\n")


def pytest_configure(config):
    path = os.environ.get("ALEXNET_TEST_FAILURES")
    # not in an xdist worker (its controller sees every report too); a pytest that a worker starts is not one
    if path and not hasattr(config, "workerinput"):
        config.pluginmanager.register(FailureLog(path), "alexnet-failure-log")


# A small, fast, learnable set-up for end-to-end runs on a CPU.
TINY = ["data=synthetic", "model=alexnet_cifar", "model.width=0.25", "optimizer=adam", "trainer.device=cpu",
        "wandb.mode=offline"]


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED} (set ALEXNET_SHARED)")
    return SHARED


def run_cli(module: str, args: list[str], cwd: Path, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    """`python -m alexnet.<module> args` in `cwd`, as a user would run it; never touches the repo's outputs/."""
    environ = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "XDG_CACHE_HOME": str(cwd / "cache"),
               "MPLCONFIGDIR": MPL_CACHE}  # matplotlib builds its font cache once, not in every test
    environ.pop("WANDB_MODE", None)
    environ.update(env)
    return subprocess.run([sys.executable, "-m", f"alexnet.{module}", *args], cwd=cwd, env=environ,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli(tmp_path):
    def run(*args: str, module: str = "run", timeout: int = 300, **env) -> subprocess.CompletedProcess:
        return run_cli(module, list(args), tmp_path, timeout, **env)

    run.cwd = tmp_path
    return run
