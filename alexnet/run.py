"""`python -m alexnet.run [overrides]`: train one AlexNet variant (or, with -m, one per sweep point).

The command line: Hydra composes the config, `alexnet.training.train` trains it. Hydra's globals are read here
only (`run_context`); everything below takes plain arguments. In a multirun a failed job is recorded and the
others go on; at the end `SweepSummary` writes the comparison report. torch is imported only once the config is
valid, so a mistyped override fails in well under a second.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from alexnet import rundir
from alexnet.config import CONF_DIR, RunDirRefused, UserError, exit_on_user_error, normalize_argv, to_typed

log = logging.getLogger("alexnet")


REFUSED = "refused"  # <sweep dir>/refused/<job>.json: jobs whose run dir holds another run, left untouched


def record_failure(dict_cfg: DictConfig, error: BaseException) -> str:
    """Write the failed job's overrides and error for the sweep's summary: to its run dir, or, when the run dir
    was refused (it holds another run), beside it, so that run's record stays as it was."""
    hydra_cfg = HydraConfig.get()
    message = str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
    record = {"job": hydra_cfg.job.num, "overrides": list(hydra_cfg.overrides.task), "error": message,
              "traceback": None if isinstance(error, UserError) else traceback.format_exc()}
    path = Path(hydra_cfg.runtime.output_dir, "failure.json")
    if isinstance(error, RunDirRefused):
        path = Path(hydra_cfg.sweep.dir, REFUSED, f"{hydra_cfg.job.num}.json")
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return message


class SweepSummary(Callback):
    """At the end of a multirun: write its comparison report, list the jobs that failed and exit non-zero."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        import shutil

        shutil.rmtree(Path(config.hydra.sweep.dir, REFUSED), ignore_errors=True)  # an earlier invocation's

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from alexnet.report import ReportError, load_local_runs, write_report

        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            result = write_report(load_local_runs([sweep_dir]), sweep_dir, f"Comparison of {sweep_dir}")
            log.info("comparison report: %s (%d configurations)", sweep_dir / "report.md", len(result["rows"]))
        except ReportError as e:
            log.warning("no comparison report: %s", e)
        failures = [json.loads(p.read_text()) for p in (*sweep_dir.glob("*/failure.json"),
                                                        *sweep_dir.glob(f"{REFUSED}/*.json"))]
        if failures:
            print(f"{len(failures)} job(s) of this sweep failed (the others finished):", file=sys.stderr)
            for f in sorted(failures, key=lambda f: f["job"]):
                print(f"  job {f['job']} ({' '.join(f['overrides'])}): {f['error']}", file=sys.stderr)
            sys.exit(1)


def run_context():
    """What Hydra knows about this run, read once: everything below takes it as plain arguments."""
    from alexnet.training import RunContext

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    notes, rundir.NOTES[:] = list(rundir.NOTES), []
    return RunContext(run_dir=Path(hydra_cfg.runtime.output_dir), overrides=list(hydra_cfg.overrides.task),
                      experiment=hydra_cfg.runtime.choices.get("experiment"),
                      sweep_dir=hydra_cfg.sweep.dir if multirun else None,
                      hydra_yaml=OmegaConf.to_yaml(hydra_cfg), notes=notes)


def absolute_paths(dict_cfg: DictConfig) -> None:
    """With hydra.job.chdir=true the job runs in its run dir: paths typed relative to where the command ran are
    made absolute first (and recorded so), or they would point into the run dir."""
    if not HydraConfig.get().job.chdir:
        return
    from hydra.utils import to_absolute_path

    for key in ("data.root", "data.cache_dir", "trainer.resume"):
        value = OmegaConf.select(dict_cfg, key)
        if isinstance(value, str) and value not in ("auto", "never") and not os.path.isabs(value):
            OmegaConf.update(dict_cfg, key, to_absolute_path(value))


def objective(summary: dict) -> float:
    """What an Optuna sweep maximises: the best validation accuracy (never the test split's)."""
    return summary.get("val/best_acc", float("nan"))


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(dict_cfg: DictConfig) -> float:
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        with exit_on_user_error():
            absolute_paths(dict_cfg)
            cfg = to_typed(dict_cfg)  # every config check, before torch is imported
            from alexnet.training import train

            return objective(train(cfg, run_context()))
    # In a sweep a failed job is recorded and the others go on, unless fail_fast is set.
    try:
        absolute_paths(dict_cfg)
        cfg = to_typed(dict_cfg)
        from alexnet.training import train

        return objective(train(cfg, run_context()))
    except Exception as e:
        message = record_failure(dict_cfg, e)
        log.error("job failed: %s", message)
        if dict_cfg.get("fail_fast"):
            print(f"error: {message}\nstopping the sweep at its first failure (fail_fast=true)", file=sys.stderr)
            sys.exit(2)
        return float("nan")  # an Optuna sweep records the trial as failed


def main() -> None:
    sys.argv[1:] = normalize_argv(sys.argv[1:])
    # W&B advertises its service process to child processes (WANDB_SERVICE). A run started from a process that
    # ran W&B itself (a notebook that called alexnet.train) would share that service, where a SIGKILLed run's
    # stream stays open: its resume then finds "run ID ... is in use". Each run keeps its own service.
    os.environ.pop("WANDB_SERVICE", None)
    with exit_on_user_error():  # a mistyped key, option or value: our one-line error, before Hydra's report
        from alexnet.overrides import check

        check(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    # Run `hydra_main` as alexnet.run.hydra_main, not __main__.hydra_main: launchers that pickle the task
    # (joblib, submitit) can then refer to it by name instead of pickling this module's globals by value.
    from alexnet.run import main as importable_main

    importable_main()
