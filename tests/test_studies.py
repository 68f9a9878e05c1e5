"""Studies at scale: every experiment composes and runs, sweeps run under other launchers, Optuna searches."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from alexnet.config import CONF_DIR, EXPERIMENTS_DIR, compose, to_typed
from conftest import TINY, run_cli
from wandb_records import offline_runs, read_run

EXPERIMENTS = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml"))
# One quick step on synthetic data, whatever model and size the experiment picks.
ONE_STEP = ["data=synthetic", "model.width=0.125", "data.train_size=300", "data.val_size=50", "data.test_size=50",
            "data.batch_size=16", "data.eval_batch_size=50", "trainer.epochs=1", "trainer.limit_batches=1",
            "trainer.device=cpu", "wandb.mode=offline"]
SMALL_SWEEP = [*TINY, "debug=smoke", "data.train_size=600", "data.val_size=100", "data.test_size=100"]


def test_the_named_studies_exist():
    assert {"seed_baseline", "dropout", "lrn", "input_size", "optimizer", "search"} <= set(EXPERIMENTS)
    assert not (CONF_DIR / "experiment").exists()  # experiments/ is the only copy


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_with_a_sweep_and_says_what_it_answers(name):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params and all(str(v) for v in params.values())
    text = (EXPERIMENTS_DIR / f"{name}.yaml").read_text()
    assert "# Question:" in text and "Time on one GPU:" in text and f"+experiment={name}" in text
    to_typed(compose([f"+experiment={name}"]))  # passes every schema check
    if name != "search":
        assert "seed" in params and len(str(params["seed"]).split(",")) == 3  # x 3 seeds


def test_input_size_pairs_each_size_with_a_model_that_fits():
    pairs = {}
    for option in ("s32", "s64", "s128", "s224"):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose("config", overrides=["experiment=input_size", f"input_size={option}"])
        typed = to_typed(cfg)
        pairs[typed.model.input_size] = typed.model.arch
    assert pairs == {32: "alexnet_cifar", 64: "alexnet_cifar", 128: "alexnet", 224: "alexnet"}


# fast_cifar trains in tests/test_gpu_acceptance.py's smoke run, alone and in two sweeps
@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if e != "fast_cifar"])
def test_experiment_runs_a_step(tmp_path, name):
    """In this process (alexnet.train: the CLI's composition), as the study's own settings are the point here."""
    import alexnet

    summary = alexnet.train([f"+experiment={name}", *ONE_STEP], run_dir=tmp_path / "run")
    assert summary["steps"] == 1 and summary["test/images"] == 50
    (run,) = [read_run(p, wait=20) for p in offline_runs(tmp_path / "run")]  # finished in this process
    assert run.group == name and run.exit_code == 0  # a single run of an experiment is grouped by its name


def grouped_runs(sweep: Path) -> list:
    return [read_run(p) for job in sorted(sweep.glob("[0-9]*")) for p in offline_runs(job)]


@pytest.mark.parametrize("launcher", [
    ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    # slow: submitit_local also runs, requeues and resumes a job in test_submitit_job_interrupted_requeued_and_resumed
    pytest.param(["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"], marks=pytest.mark.slow)],
    ids=["joblib", "submitit_local"])
def test_launcher_runs_a_sweep_into_one_wandb_group(cli, launcher):
    result = cli("-m", *SMALL_SWEEP, *launcher, "model.dropout=0.0,0.5", timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (sweep,) = cli.cwd.glob("multirun/*/*")
    runs = grouped_runs(sweep)
    assert len(runs) == 2 and all(r.exit_code == 0 for r in runs)
    assert {r.group for r in runs} == {f"multirun/{sweep.parent.name}/{sweep.name}"}
    assert {r.config["model"]["dropout"] for r in runs} == {0.0, 0.5}
    assert (sweep / "report.md").is_file()  # every sweep ends in its comparison report


def test_optuna_search_of_three_trials_reports_the_best(cli):
    result = cli("-m", "+experiment=search", *SMALL_SWEEP, "trainer.epochs=1", "hydra.sweeper.n_trials=3",
                 "hydra.sweeper.study_name=test_search", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Best parameters:" in result.stdout and "Best value:" in result.stdout
    (sweep,) = cli.cwd.glob("multirun/*/*")
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "model.dropout"}
    runs = grouped_runs(sweep)
    assert len(runs) == 3 and len({r.group for r in runs}) == 1 and runs[0].group.startswith("search:")
    best_val = max(r.summary["val/best_acc"] for r in runs)
    assert best["best_value"] == pytest.approx(best_val)  # the trial value is the run's best val/acc
    assert 0.001 <= best["best_params"]["optimizer.lr"] <= 0.1


def cmdline(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # the process ended meanwhile
        return b""


def test_submitit_job_interrupted_requeued_and_resumed(tmp_path):
    """submitit's requeue signal mid-training: checkpoint, requeue, resume; the result equals an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    from alexnet.checkpoint import load_checkpoint
    from test_reliability import RESUMABLE, max_step

    (tmp_path / "reference").mkdir()
    reference = run_cli("run", RESUMABLE, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    (ref_dir,) = {p.parent for p in (tmp_path / "reference").glob("outputs/*/*/metrics.jsonl")}

    cwd = tmp_path / "sweep"
    cwd.mkdir()
    env = {**os.environ, "WANDB_SILENT": "true", "XDG_CACHE_HOME": str(cwd / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "alexnet.run", "-m", *RESUMABLE, "hydra/launcher=submitit_local",
                             "hydra.launcher.timeout_min=10"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline, task = time.monotonic() + 240, None
    while time.monotonic() < deadline and proc.poll() is None:
        jobs = list(cwd.glob("multirun/*/*/0/metrics.jsonl"))
        if jobs and max_step(jobs[0].parent) >= 20:
            task = next(int(p.parent.name) for p in Path("/proc").glob("[0-9]*/cmdline")
                        if b"submitit.core._submit" in cmdline(p) and str(cwd).encode() in cmdline(p))
            os.kill(task, signal.SIGUSR2)  # what SLURM sends before a time limit or preemption
            break
        time.sleep(0.1)
    output, _ = proc.communicate(timeout=300)
    assert task is not None and proc.returncode == 0, output[-3000:]
    (job,) = cwd.glob("multirun/*/*/0")
    # submitit keeps the job's stdout in _log.out and its stderr, where warnings go, in _log.err
    log = "".join(p.read_text() for p in sorted(job.parent.glob(".submitit/*/*_0_log.*")))
    assert "received SIGUSR2" in log and "submitit requeues the job" in log and "Requeued job" in log
    assert "resuming from" in log
    resumed, alone = load_checkpoint(job / "checkpoints/last.pt")["model"], load_checkpoint(
        ref_dir / "checkpoints/last.pt")["model"]
    assert all(torch.equal(resumed[k], alone[k]) for k in alone)
    runs = [read_run(p) for p in offline_runs(job)]
    assert len(runs) == 2 and len({r.run_id for r in runs}) == 1 and runs[-1].exit_code == 0
