"""The run dir: which one a command writes to, one writer at a time, and the config record it holds.

- `choose_run_dir` is Hydra's `hydra.run.dir` (a resolver): with trainer.resume=auto, the newest interrupted
  run made by the same overrides (compared as a set) that no other process holds; else a fresh dir.
- `lock` holds an flock on `<run_dir>/.lock` for the run's life. The OS drops it when the process dies, so a
  killed run never leaves a stale lock, and two processes never write one run dir at once.
- `write_record` writes `.hydra/config.yaml` and `overrides.yaml`. Hydra's own copies are off
  (`hydra.output_subdir: null`): Hydra would write them at job start, before a resume is checked, so a
  refused resume would leave a record of a config that never trained.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from alexnet.errors import RunDirRefused, missing_folders, remove_if_empty

_HELD: dict[Path, int] = {}  # run dir -> the open lock file: this process's locks
NOTES: list[str] = []  # what choosing the run dir found, for the run's log (logging is not set up yet then)
MADE: list[Path] = []  # the fresh run dirs `choose_run_dir` made in this process
NEW_FOLDERS: dict[Path, list[Path]] = {}  # a made run dir -> the folders above it that making it created
MADE_SWEEPS: list[Path] = []  # the sweep dirs a multirun of this process made
_CHOSEN: dict[tuple, str] = {}  # choose_run_dir's arguments -> its answer, in this process
NAME_ONLY = False  # set by commands that train nothing (--cfg, alexnet.evaluate): the resolver makes no dir


class RunDirBusy(RunDirRefused):
    """Another process is writing this run dir."""


def _key(path: Path) -> Path:
    return Path(os.path.abspath(path))


def holder(run_dir: Path) -> str:
    """Who holds the lock, as the lock file says (`pid N on HOST`). The holder truncates the file and then writes
    its line, so a read in between finds it empty: look again a few times before saying "another process"."""
    for _ in range(5):
        try:
            text = (Path(run_dir) / ".lock").read_text().strip()
        except OSError:
            return "another process"
        if text:
            return text
        time.sleep(0.05)
    return "another process"


def try_lock(run_dir: Path) -> bool:
    """Take the run dir's lock (creating the dir), or False if another process holds it. Idempotent."""
    key = _key(run_dir)
    if key in _HELD:
        return True
    key.mkdir(parents=True, exist_ok=True)
    fd = os.open(key / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode())
    _HELD[key] = fd
    return True


def lock(run_dir: Path) -> None:
    """Hold the run dir for this process, or stop with the contract if another one writes it."""
    if not try_lock(run_dir):
        raise RunDirBusy(f"the run dir {run_dir} is being written by {holder(run_dir)}: two writers would "
                         f"interleave its metrics.jsonl and checkpoints. Fix: wait for that run to finish, or give "
                         f"this one its own dir (hydra.run.dir=PATH, or hydra.sweep.dir=PATH with -m).")


def unlock(run_dir: Path) -> None:
    fd = _HELD.pop(_key(run_dir), None)
    if fd is not None:
        os.close(fd)  # closing drops the flock


def comparable(overrides) -> list[str]:
    """The overrides that make a command what it is, as parsed values in a set: order, spelling (`1e-3`,
    `0.001`) and repeats are no matter."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from alexnet.config import normalize_override

    kept = [normalize_override(o) for o in overrides if not o.startswith(("trainer.resume=", "hydra."))]
    try:
        parsed = OverridesParser.create().parse_overrides(kept)
    except Exception:  # not parsable (a hand-edited record): compare the text
        return sorted(set(kept))
    return sorted({f"{o.get_key_element()}={o.value()!r}" for o in parsed})


def is_resumable(run_dir: Path) -> bool:
    """A run that stopped before finishing (signal, kill, error) and left a checkpoint."""
    checkpoints = run_dir / "checkpoints"
    if not any((checkpoints / name).exists() for name in ("last.pt", "last.prev.pt")):
        return False
    rows = metrics_rows(run_dir)  # no record, or its last line cut short by a kill: the checkpoint decides
    return not rows or rows[-1] != {"_exit": 0}


def interrupted_runs(root: str, overrides) -> list[Path]:
    """Interrupted run dirs under `root` (`root/<date>/<time>`) made by the same overrides, newest first."""
    wanted, found = comparable(overrides), []
    for saved in sorted(Path(root).glob("*/*/.hydra/overrides.yaml"), reverse=True):
        try:
            same = comparable(yaml.safe_load(saved.read_text()) or []) == wanted
        except (OSError, yaml.YAMLError):
            continue
        if same and is_resumable(saved.parent.parent):
            found.append(saved.parent.parent)
    return found


def check_can_make(run_dir: Path, key: str = "hydra.run.dir") -> None:
    """Refuse, before Hydra makes it, a run dir that is a file, lies under a file, or cannot be written."""
    what = "the sweep dir" if "sweep" in key else "the run dir"
    if str(run_dir).strip() in ("", "."):  # the record would land in the working directory itself
        raise RunDirRefused(f"{key}={str(run_dir)!r} would write the record into the working directory itself. "
                            f"Fix: {key}=PATH naming a folder of its own.")
    run_dir = Path(run_dir)
    existing = next(p for p in [run_dir, *run_dir.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise RunDirRefused(f"{what} {run_dir} cannot be made: {existing} is a file. Fix: {key}=PATH "
                            f"naming a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirRefused(f"{what} {run_dir} cannot be written: {existing} is read-only. Fix: run from a "
                            f"writable directory, or set {key}=PATH on a writable disk.")


def choose_run_dir(root: str, fresh: str, overrides, resume: str) -> str:
    """Hydra's run dir for a single run (see the module doc). The chosen dir is locked at once, so a second
    process started with the same command moves on to its own dir.

    Under torchrun only rank 0 has a run dir; the other ranks get a scratch dir for Hydra's own files and
    learn rank 0's run dir from it.
    """
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:
        return str(Path(tempfile.gettempdir()) / f"alexnet-rank{rank}-of-{os.getppid()}")
    if NAME_ONLY:
        return str(Path(root, fresh))
    key = (os.getcwd(), root, fresh, tuple(overrides), resume)
    if key not in _CHOSEN:  # Hydra resolves the run dir several times per run: choose once
        _CHOSEN[key] = _choose(root, fresh, list(overrides), resume)
    return _CHOSEN[key]


def _choose(root: str, fresh: str, overrides: list[str], resume: str) -> str:
    check_can_make(Path(root, fresh))
    for run_dir in interrupted_runs(root, overrides):
        if resume != "auto":
            NOTES.append(f"an interrupted run of this command is in {run_dir}; this one starts afresh "
                         f"(trainer.resume={resume}). trainer.resume=auto would continue it.")
            break
        if try_lock(run_dir):
            return str(run_dir)
        NOTES.append(f"the interrupted run {run_dir} of this command is being resumed by {holder(run_dir)}; "
                     f"this one starts afresh in its own run dir")
    candidate, n = Path(root, fresh), 1
    new_folders = missing_folders(candidate)[1:]
    while candidate.exists() or not try_lock(candidate):  # another command started within the same second
        n += 1
        candidate = Path(root, f"{fresh}-{n}")
    MADE.append(candidate)
    NEW_FOLDERS[candidate.absolute()] = new_folders
    return str(candidate)


def holds_a_run(run_dir: Path) -> bool:
    """The run dir already has a record or checkpoints of a run."""
    metrics = run_dir / "metrics.jsonl"
    return (metrics.is_file() and metrics.stat().st_size > 0) or any((run_dir / "checkpoints").glob("*.pt"))


def metrics_rows(run_dir: Path) -> list[dict]:
    """metrics.jsonl's records, skipping a line a kill cut short; [] without the file."""
    rows = []
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut short by a kill
            pass
    return rows


def recorded_config(run_dir: Path) -> dict | None:
    try:
        recorded = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return recorded if isinstance(recorded, dict) else None


def finished_summary(run_dir: Path, config: dict) -> dict | None:
    """The summary of the run in `run_dir` if it finished (exit 0) with this config, up to what may change on
    resume and the same number of epochs; None otherwise."""
    from alexnet.resume import config_differences

    rows, recorded = metrics_rows(run_dir), recorded_config(run_dir)
    if not rows or rows[-1] != {"_exit": 0} or recorded is None or config_differences(recorded, config):
        return None
    if recorded.get("trainer", {}).get("epochs") != config["trainer"]["epochs"]:
        return None  # more (or fewer) epochs: the resume decides
    return next((r["_summary"] for r in reversed(rows) if "_summary" in r), None)


def never_checkpointed_same(run_dir: Path, config: dict) -> bool:
    """The run dir's run has no checkpoint and its recorded config is `config` up to what may change on resume."""
    from alexnet.resume import config_differences

    rows, recorded = metrics_rows(run_dir), recorded_config(run_dir)
    if any((run_dir / "checkpoints").glob("*.pt")) or (rows and rows[-1] == {"_exit": 0}) or recorded is None:
        return False
    return not config_differences(recorded, config)


def snapshot(run_dir: Path) -> int:
    """What a job's run dir held as the job began: the size of Hydra's run.log (0 when Hydra just made it)."""
    try:
        return (Path(run_dir) / "run.log").stat().st_size
    except OSError:
        return 0


# What a job makes in its run dir before its checks pass: the lock, Hydra's log, the checkpoint writability probe
MADE_AT_START = {".lock", "run.log", "checkpoints"}


def only_start_files(run_dir: Path) -> bool:
    """The run dir holds nothing but what a job's start made (and empty folders: a record begun, not written)."""
    def empty_folder(p: Path) -> bool:
        return p.is_dir() and not any(p.iterdir())

    return all(empty_folder(p) if p.name == "checkpoints" or p.name not in MADE_AT_START else True
               for p in run_dir.iterdir())


def _remove(run_dir: Path) -> None:
    """Remove a run dir of this process's, outputs/<date>/ when it was that folder's only run, and the folders
    above it that making it created (outputs/ in a fresh working directory) when they are empty."""
    unlock(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # rmdir refuses a folder that holds other runs
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_dir.parent.name):
            run_dir.parent.rmdir()
    remove_if_empty(NEW_FOLDERS.get(Path(run_dir).absolute(), []))


def leave_as_found(run_dir: Path, log_size: int) -> None:
    """After a run that never started (refused, or interrupted in start-up): remove the run dir if it was new
    (it holds only what the start made), else cut run.log back to `log_size`, so that the dir's record is as it
    was."""
    run_dir = Path(run_dir)
    try:
        if log_size == 0 and only_start_files(run_dir):
            _remove(run_dir)
        elif (run_dir / "run.log").is_file():
            os.truncate(run_dir / "run.log", log_size)
    except OSError:
        pass  # a read-only dir: nothing was written to it either


def discard(run_dir: Path) -> None:
    """Remove a dir of this process's that records nothing finished: its files, W&B's included."""
    wandb = sys.modules.get("wandb")
    if wandb is not None:  # a W&B run begun in it would write its files back at exit
        with contextlib.suppress(Exception):
            wandb.teardown(exit_code=130)
    _remove(Path(run_dir))


def discard_if_made(run_dir: Path) -> None:
    """Remove a run dir this process made for a run stopped before its first step (its record, its W&B files)."""
    if any(run_dir.resolve() == made.resolve() for made in MADE):
        discard(run_dir)


def remove_unstarted() -> None:
    """Remove the run dirs (and sweep dirs) this process made for runs that never began."""
    for run_dir in MADE:
        if run_dir.is_dir() and only_start_files(run_dir):
            leave_as_found(run_dir, 0)
    for sweep_dir in MADE_SWEEPS:  # stopped at launch: Hydra's multirun.yaml, and jobs that never began
        if sweep_dir.is_dir() and all(p.name == "multirun.yaml" or (p.is_dir() and only_start_files(p))
                                      for p in sweep_dir.iterdir()):
            shutil.rmtree(sweep_dir, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_record(run_dir: Path, config: dict, overrides: list[str], hydra_yaml: str | None = None) -> None:
    """The run's config record, where Hydra keeps it (reports and `trainer.resume=auto` read it). A failure
    record of an earlier attempt goes: this attempt's checks passed, and it will write its own if it fails."""
    (run_dir / "failure.json").unlink(missing_ok=True)
    folder = run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    _write_atomic(folder / "overrides.yaml", yaml.safe_dump(list(overrides)))
    if hydra_yaml is not None:
        _write_atomic(folder / "hydra.yaml", hydra_yaml)
