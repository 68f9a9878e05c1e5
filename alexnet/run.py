"""`python -m alexnet.run [overrides]`: train one AlexNet variant (or, with -m, one per sweep point).

The command line: Hydra composes the config, `alexnet.training.train` trains it. Hydra's globals are read here
only (`run_context`); everything below takes plain arguments. In a multirun a failed job is recorded and the
others go on; at the end `SweepSummary` writes the comparison report. torch is imported only once the config is
valid, so a mistyped override fails in well under a second.
"""
from __future__ import annotations

from alexnet.errors import quiet_ctrl_c_while_starting

quiet_ctrl_c_while_starting(__name__)  # before the heavy imports below

import json
import logging
import os
import shlex
import signal
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from alexnet import rundir
from alexnet.config import CONF_DIR, normalize_argv, to_typed
from alexnet.errors import RunDirRefused, StopNow, UserError, contract

log = logging.getLogger("alexnet")


COMMAND_ENV = "ALEXNET_COMMAND"  # the command line, for "to resume, run ..." (joblib's workers inherit it)
STOPPING = ".stopping"  # <sweep dir>/.stopping: a Ctrl-C asked a joblib sweep to stop (see SweepSummary)
REFUSED = "refused"  # <sweep dir>/refused/<job>.json: jobs whose run dir holds another run, left untouched
BEFORE_TRAINING = ("interrupted (Ctrl-C) before training began: nothing was trained. Run the same command again "
                   "to start it.")


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


def resume_sweep_command(sweep_dir: str | Path) -> str:
    """The command that resumes this sweep: the same one, in the same sweep dir (a new invocation makes a new)."""
    argv = shlex.split(os.environ.get(COMMAND_ENV) or "python -m alexnet.run -m ...")
    return shlex.join([*(a for a in argv if not a.startswith("hydra.sweep.dir=")), f"hydra.sweep.dir={sweep_dir}"])


class SweepSummary(Callback):
    """At the end of a multirun: write its comparison report, list the jobs that failed and exit non-zero.

    Under a launcher whose jobs run in worker processes (joblib), a Ctrl-C in the terminal reaches every worker,
    and each running job checkpoints and stops as a single run does. This process must not kill them meanwhile:
    its first Ctrl-C only marks the sweep as stopping (`STOPPING` in the sweep dir, so that queued jobs do not
    start), and the end of the sweep says how to resume it. A second Ctrl-C stops at once.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        import shutil

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():  # removed again if the sweep is stopped before any job began
            rundir.MADE_SWEEPS.append(sweep_dir)
        shutil.rmtree(sweep_dir / REFUSED, ignore_errors=True)  # an earlier invocation's
        (sweep_dir / STOPPING).unlink(missing_ok=True)
        if jobs_run_in_workers(config.hydra):
            signal.signal(signal.SIGINT, lambda signum, frame: self.stop_sweep(sweep_dir))

    @staticmethod
    def stop_sweep(sweep_dir: Path) -> None:
        marker = sweep_dir / STOPPING
        if marker.exists():
            raise StopNow(f"stopped the sweep at once by a second Ctrl-C: jobs that had not finished their "
                          f"checkpoint continue from their previous one. To resume: {resume_sweep_command(sweep_dir)}")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        log.warning("Ctrl-C: every running job checkpoints and stops, and queued jobs do not start (Ctrl-C again "
                    "to stop at once)")

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from alexnet.report import ReportError, load_local_runs, write_report

        sweep_dir = Path(config.hydra.sweep.dir)
        if (sweep_dir / STOPPING).exists():
            (sweep_dir / STOPPING).unlink()
            raise StopNow(f"the sweep was stopped by Ctrl-C: its running jobs checkpointed, and the jobs not "
                          f"started were left. To resume it: {resume_sweep_command(sweep_dir)}")
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


def jobs_run_in_workers(hydra_cfg: DictConfig) -> bool:
    """Whether the launcher runs jobs in worker processes (joblib) rather than in the command's own."""
    return "joblib" in str(OmegaConf.select(hydra_cfg, "launcher._target_"))


def run_context():
    """What Hydra knows about this run, read once: everything below takes it as plain arguments."""
    from alexnet.training import RunContext

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    notes, rundir.NOTES[:] = list(rundir.NOTES), []
    return RunContext(run_dir=Path(hydra_cfg.runtime.output_dir), overrides=list(hydra_cfg.overrides.task),
                      experiment=hydra_cfg.runtime.choices.get("experiment"),
                      sweep_dir=hydra_cfg.sweep.dir if multirun else None,
                      hydra_yaml=OmegaConf.to_yaml(hydra_cfg), notes=notes, command=os.environ.get(COMMAND_ENV))


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


def run_one(dict_cfg: DictConfig) -> float:
    """A single run, under the contract here: Hydra would add its own "Error executing job" line to ours."""
    run_dir = HydraConfig.get().runtime.output_dir
    found, ctx = rundir.snapshot(run_dir), None
    with contract(interrupted=BEFORE_TRAINING):
        try:
            ctx = run_context()
            absolute_paths(dict_cfg)
            cfg = to_typed(dict_cfg)  # every config check, before torch is imported
            from alexnet.training import train

            return objective(train(cfg, ctx))
        except BaseException as e:
            if ctx is None or not ctx.recorded:  # refused, or stopped before it began: leave the dir as it was
                rundir.leave_as_found(run_dir, found)
            elif not ctx.began and isinstance(e, KeyboardInterrupt):  # Ctrl-C while W&B started: no run
                rundir.discard_if_made(Path(run_dir))
            raise


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(dict_cfg: DictConfig) -> float:
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return run_one(dict_cfg)
    # In a sweep a failed job is recorded and the others go on, unless fail_fast is set.
    ctx = run_context()
    stopping = Path(ctx.sweep_dir, STOPPING)
    try:
        if stopping.exists():
            raise UserError("not started: the sweep was stopped by Ctrl-C")
        absolute_paths(dict_cfg)
        cfg = to_typed(dict_cfg)
        from alexnet.training import train

        return objective(train(cfg, ctx))
    except (SystemExit, KeyboardInterrupt) as e:
        # The basic launcher: the stop ends the sweep here, and its message says how to resume.
        if not jobs_run_in_workers(HydraConfig.get()):
            raise
        # A joblib worker: the job checkpointed (or had not begun). The sweep is stopping (the Ctrl-C reached
        # every process at once: say so here too, so that no queued job starts), and its end says how to resume.
        stopping.touch()
        record_failure(dict_cfg, UserError(f"stopped by Ctrl-C ({str(e) or 'after its checkpoint'})"))
        return float("nan")
    except Exception as e:
        message = record_failure(dict_cfg, e)
        log.error("job failed: %s", message)
        if dict_cfg.get("fail_fast"):  # exits (SystemExit): a launcher would record an exception and go on
            with contract():
                raise UserError(f"{message}\nstopping the sweep at its first failure (fail_fast=true)") from None
        return float("nan")  # an Optuna sweep records the trial as failed


def main() -> None:
    sys.argv[1:] = normalize_argv(sys.argv[1:])
    os.environ[COMMAND_ENV] = shlex.join(["python", "-m", "alexnet.run", *sys.argv[1:]])  # for "to resume, run ..."
    # W&B advertises its service process to child processes (WANDB_SERVICE). A run started from a process that
    # ran W&B itself (a notebook that called alexnet.train) would share that service, where a SIGKILLed run's
    # stream stays open: its resume then finds "run ID ... is in use". Each run keeps its own service.
    os.environ.pop("WANDB_SERVICE", None)
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        from alexnet.help import text

        print(text())
        return
    if "--validate" in sys.argv[1:]:
        with contract():
            from alexnet.validate import validate

            print("\n".join(validate([a for a in sys.argv[1:] if a != "--validate"])))
        return
    with contract(interrupted=BEFORE_TRAINING):
        from alexnet.overrides import check

        check(sys.argv[1:])  # a mistyped key, option or value: our one-line error, before Hydra makes a run dir
        rundir.NAME_ONLY = any(a in ("--cfg", "-c") for a in sys.argv[1:])
        try:
            hydra_main()
        except BaseException:  # a Ctrl-C can come before hydra_main runs, just after the run dir was made
            rundir.remove_unstarted()
            raise


if __name__ == "__main__":
    # Run `hydra_main` as alexnet.run.hydra_main, not __main__.hydra_main: launchers that pickle the task
    # (joblib, submitit) can then refer to it by name instead of pickling this module's globals by value.
    from alexnet.run import main as importable_main

    importable_main()
