"""The Python API: `alexnet.train(overrides)` trains one run in this process, as `python -m alexnet.run` would.

The same composition, validation, run dir choice (and resume), record and W&B run as the command line; errors
are raised (UserError for a problem the user can fix) instead of ending the process. For notebooks, scripts and
tests that do not need a subprocess.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import open_dict
from omegaconf.errors import OmegaConfBaseException

from alexnet import rundir
from alexnet.config import compose, normalize_argv, to_typed
from alexnet.errors import ConfigError
from alexnet.overrides import check


@contextlib.contextmanager
def run_log(run_dir: Path):
    """The run's log lines in `run_dir/run.log`, as the CLI keeps them; on stderr too if logging is not set up."""
    logger = logging.getLogger("alexnet")
    run_dir.mkdir(parents=True, exist_ok=True)
    handlers = [logging.FileHandler(run_dir / "run.log")]
    handlers[0].setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    if not logging.getLogger().handlers:
        handlers.append(logging.StreamHandler())
    level = logger.level
    logger.setLevel(logging.INFO)
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)


def train(overrides: list[str] | tuple[str, ...] = (), run_dir: str | Path | None = None) -> dict:
    """Train one run: `overrides` as on the command line (`["optimizer=adam", "model.dropout=0.25"]`).

    `run_dir`: where its record goes; by default as the CLI picks it (`outputs/<date>/<time>`, or the interrupted
    run of the same overrides to resume). Returns the run's summary: test/acc, test/loss, val/best_acc,
    train/elapsed, params, epochs, steps.
    """
    from alexnet.training import RunContext, train as train_run

    overrides = normalize_argv(list(overrides))
    try:
        dict_cfg = compose(overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:  # a mistyped key, option or value
        check(overrides)  # raises ConfigError with the CLI's message, naming the override
        raise ConfigError(str(e)) from e
    with_hydra = dict_cfg.copy()  # hydra.run.dir interpolates other hydra.* keys: resolve it in the whole config
    hydra_node = with_hydra.hydra
    with open_dict(dict_cfg):
        del dict_cfg["hydra"]
    cfg = to_typed(dict_cfg)  # every check before the run dir is chosen (and locked)
    if run_dir is None:
        run_dir = hydra_node.run.dir  # the resolver picks (and locks) it, as for the CLI
    notes, rundir.NOTES[:] = list(rundir.NOTES), []
    ctx = RunContext(Path(run_dir), overrides, experiment=hydra_node.runtime.choices.get("experiment"), notes=notes)
    found = rundir.snapshot(ctx.run_dir)
    try:
        with run_log(ctx.run_dir):
            return train_run(cfg, ctx)
    except BaseException:
        if not ctx.recorded:  # refused, or stopped before it began: the run dir as it was (none, if it was new)
            rundir.leave_as_found(ctx.run_dir, found)
        raise
    finally:
        rundir.unlock(ctx.run_dir)  # also when the run never started
