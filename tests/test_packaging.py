"""The wheel: built from this checkout, installed into a folder outside it, run through its console scripts from
another working directory. Only `pip install -e .` used to work: a wheel held alexnet/*.py without conf/."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, TINY


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel installed with `pip install --target` into a fresh folder; returns that folder."""
    root = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(root / "dist")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel, = (root / "dist").glob("alexnet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"alexnet/conf/config.yaml", "alexnet/conf/model/alexnet.yaml", "alexnet/conf/hydra/launcher/slurm.yaml",
            "alexnet/experiments/dropout.yaml", "alexnet/experiments/input_size/s32.yaml"} <= names
    target = root / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def run_installed(target: Path, cwd: Path, command: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_SILENT": "true"}  # the wheel's alexnet, not the repo's
    env.pop("WANDB_MODE", None)
    return subprocess.run([sys.executable, str(target / "bin" / command), *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=300)


def test_the_installed_wheel_finds_its_configs_from_another_directory(installed, tmp_path):
    where = run_installed(installed, tmp_path, "alexnet-train", "--cfg", "job", "+experiment=dropout")
    assert where.returncode == 0, where.stderr[-3000:]
    assert "arch: alexnet" in where.stdout
    env = {**os.environ, "PYTHONPATH": str(installed)}
    origin = subprocess.run([sys.executable, "-c", "import alexnet.config as c; print(c.CONF_DIR)"], cwd=tmp_path,
                            env=env, capture_output=True, text=True).stdout.strip()
    assert Path(origin) == installed / "alexnet" / "conf"
    typo = run_installed(installed, tmp_path, "alexnet-train", "modle.dropout=0.1")
    assert typo.returncode == 2 and "Did you mean 'model.dropout'?" in typo.stderr


@pytest.mark.parametrize("line,expected", [("alexnet-train model=al", "model=alexnet model=alexnet_cifar"),
                                           ("alexnet-train optimizer=", "optimizer=adam optimizer=adamw optimizer=sgd"),
                                           ("alexnet-train +experiment=dr", "+experiment=dropout"),
                                           ("alexnet-train model.dr", "model.dropout=")])
def test_shell_completion_of_the_installed_command(installed, tmp_path, line, expected):
    """What `eval "$(alexnet-train -sc install=bash)"` makes bash ask for at each Tab."""
    env = {**os.environ, "PYTHONPATH": str(installed), "COMP_LINE": line, "COMP_POINT": str(len(line))}
    query = subprocess.run([sys.executable, str(installed / "bin" / "alexnet-train"), "-sc", "query=bash"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert query.stdout.split() == expected.split(), query.stderr[-2000:]


@pytest.mark.slow
def test_the_installed_wheel_trains_and_scores_through_its_console_scripts(installed, tmp_path):
    trained = run_installed(installed, tmp_path, "alexnet-train", *TINY, "debug=smoke", "hydra.run.dir=run")
    assert trained.returncode == 0, trained.stderr[-3000:]
    scored = run_installed(installed, tmp_path, "alexnet-evaluate", "ckpt=run/checkpoints/best.pt",
                           "wandb.mode=disabled")
    assert scored.returncode == 0 and "test accuracy" in scored.stdout, scored.stderr[-3000:]
    table = run_installed(installed, tmp_path, "alexnet-summary", "model=alexnet_cifar")
    assert table.returncode == 0 and "Total params" in table.stdout
