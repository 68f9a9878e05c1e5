"""`python -m alexnet.run --validate [overrides]` (or `alexnet-train --validate`): every check a run makes before
it trains, without training: the overrides and their values (each job of a sweep with -m), the run or sweep dir,
the device, the memory the training step needs, and the data (its layout and class folders, or CIFAR-10's files),
without decoding a single image. Exit 0 with a line per job, or the contract's error and 2.
"""
from __future__ import annotations

from alexnet.config import compose
from alexnet.data import check_data
from alexnet.overrides import check, jobs, split_argv


def validate(argv: list[str]) -> list[str]:
    """Raise our UserError at the first problem; else one line per job saying what would run."""
    from alexnet.training import check_memory, resolve_device

    split = split_argv(argv)
    if split is None:
        return ["nothing to validate: the command only prints (--help, --info, ...)"]
    overrides, multirun = split
    if multirun:  # a study's own sweep (hydra.sweeper.params in experiments/*.yaml) counts as typed
        try:
            params = compose(jobs(overrides, True)[0], return_hydra_config=True).hydra.sweeper.get("params") or {}
        except Exception:
            check(argv)  # our message for what does not compose
            raise
        typed = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
        params = [f"{k}={v}" for k, v in params.items() if k not in typed]
    lines = []
    for overrides, cfg in check(argv, sweep_params=params if multirun else []):  # composed and typed once
        device = resolve_device(cfg.trainer.device.value)
        check_memory(cfg, device)
        data = check_data(cfg.data)
        lines.append(f"valid: {' '.join(overrides) or 'the defaults'} | {cfg.model.arch} at {cfg.model.input_size}px "
                     f"on {device} | {data}")
    return lines
