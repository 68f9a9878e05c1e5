"""Records that never lie: config, checkpoints, metrics.jsonl and the W&B run say exactly what was trained.

Runs go through `alexnet.train` in this process (the CLI's composition, run dir choice and checks); the CLI's
own contract (exit 2, one line) is tested in test_cli.py, concurrency with real second processes here.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import alexnet
from alexnet import rundir
from alexnet.checkpoint import load_checkpoint
from alexnet.config import compose, to_dict, to_typed
from alexnet.errors import UserError
from alexnet.data import Split
from alexnet.engine import EpochProgress, confusion_matrix, per_class_accuracy, train_one_epoch
from alexnet.config import flatten
from alexnet.resume import MAY_CHANGE, ResumeMismatch, config_differences
from alexnet.training import scored_test_split
from conftest import REPO, TINY
from test_data import make_imagefolder

SMALL = [*TINY, "model.width=0.125", "data.train_size=600", "data.val_size=100", "data.test_size=100",
         "trainer.epochs=1", "wandb.mode=disabled"]


def train_in(run_dir: Path, *overrides: str) -> dict:
    return alexnet.train([*SMALL, *overrides], run_dir=run_dir)


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run's record (its log and lock aside), to show that a refused run changed nothing."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name not in ("run.log", ".lock")}


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- resuming

@pytest.mark.parametrize("change,key", [
    ("optimizer.lr=0.5", "optimizer.lr: 0.001 in the checkpoint, 0.5 now"),
    ("model.width=0.25", "model.width: 0.125 in the checkpoint, 0.25 now"),
    ("trainer.label_smoothing=0.1", "trainer.label_smoothing"),
])
def test_a_changed_override_cannot_continue_a_run_and_changes_nothing(tmp_path, change, key):
    run_dir = tmp_path / "run"
    train_in(run_dir)
    before = snapshot(run_dir)
    with pytest.raises(ResumeMismatch, match=key) as error:
        train_in(run_dir, change)
    assert "trainer.resume=never with a fresh hydra.run.dir" in str(error.value)
    assert snapshot(run_dir) == before  # .hydra/config.yaml, checkpoints and metrics.jsonl as they were


def test_what_may_change_on_resume_continues_one_truthful_record(tmp_path, caplog):
    """More epochs (constant lr) continue the run: one history, one summary, one exit, the wall time of both
    processes, the config of the whole run, and a W&B sync command for both offline halves."""
    run_dir = tmp_path / "run"
    first = train_in(run_dir, "wandb.mode=offline")
    with caplog.at_level(logging.INFO, logger="alexnet"):
        second = train_in(run_dir, "wandb.mode=offline", "trainer.epochs=2")
    assert (first["epochs"], second["epochs"]) == (1, 2) and second["steps"] == 2 * first["steps"]
    rows = records(run_dir)
    assert [r["epoch"] for r in rows if "val/acc" in r] == [1, 2]
    assert sum("_summary" in r for r in rows) == 1 and rows[-1] == {"_exit": 0}
    runtimes = [r["_runtime"] for r in rows if "_runtime" in r]
    assert runtimes == sorted(runtimes)  # the second process goes on from the first one's time
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert config["trainer"]["epochs"] == 2
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["config"]["trainer"]["epochs"] == 2
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2
    sync = [r.getMessage() for r in caplog.records if "wandb sync" in r.getMessage()][-1]
    assert all(str(d) in sync for d in offline)


def test_more_epochs_under_a_cosine_schedule_is_refused():
    """The cosine schedule's lr depends on the total: more epochs would change steps already taken."""
    saved = to_dict(compose([*SMALL, "scheduler=cosine"]))
    assert not config_differences(saved, to_dict(compose([*SMALL, "scheduler=cosine", "wandb.tags=[a]"])))
    assert [k for k, _, _ in config_differences(saved, to_dict(compose([*SMALL, "scheduler=cosine",
                                                                          "trainer.epochs=2"])))] == ["trainer.epochs"]
    constant = to_dict(compose(SMALL))
    assert not config_differences(constant, to_dict(compose([*SMALL, "trainer.epochs=2"])))


LEAVES = st.dictionaries(st.sampled_from(["a", "b", "lr", "epochs"]), st.integers(0, 3), min_size=1)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["trainer", "optimizer", "wandb", "model"]), LEAVES, min_size=1),
       st.data())
def test_a_difference_is_reported_exactly_when_a_key_outside_may_change_differs(saved, data):
    now = json.loads(json.dumps(saved))
    changed = data.draw(st.lists(st.sampled_from(sorted(flatten(saved))), unique=True))
    for key in changed:
        group, leaf = key.split(".")
        now[group][leaf] += 1
    allowed = [k for k in changed if k.startswith("wandb.") or k in MAY_CHANGE]
    assert sorted(k for k, _, _ in config_differences(saved, now)) == sorted(set(changed) - set(allowed))


def test_a_run_dir_that_holds_another_run_is_never_written_over(tmp_path):
    run_dir = tmp_path / "run"
    train_in(run_dir)
    before = snapshot(run_dir)
    with pytest.raises(UserError, match="already holds a run"):
        train_in(run_dir, "trainer.resume=never")
    assert snapshot(run_dir) == before


def test_resuming_another_runs_finished_checkpoint_tests_it_in_a_complete_new_record(tmp_path):
    """trainer.resume=PATH of a run whose epochs are all done: the new run dir gets its best checkpoint and
    history, and the final test runs again (before: FileNotFoundError for best.pt)."""
    first = train_in(tmp_path / "first")
    again = train_in(tmp_path / "second", f"trainer.resume={tmp_path / 'first' / 'checkpoints' / 'last.pt'}")
    assert again["test/acc"] == pytest.approx(first["test/acc"]) and again["epochs"] == 1
    assert (tmp_path / "second" / "checkpoints" / "best.pt").is_file()
    rows = records(tmp_path / "second")
    assert [r["epoch"] for r in rows if "val/acc" in r] == [1] and rows[-1] == {"_exit": 0}


# ------------------------------------------------------------------------------------- non-finite values

def test_a_diverging_run_stops_and_every_checkpoint_on_disk_is_finite(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(UserError) as error:
        train_in(run_dir, "optimizer=sgd", "optimizer.lr=1e6", "trainer.epochs=2")
    message = str(error.value)
    assert "non-finite" in message
    written = sorted((run_dir / "checkpoints").glob("*.pt"))
    if written:
        assert f"The last good checkpoint is {run_dir / 'checkpoints' / 'last.pt'}" in message
    else:
        assert "This run wrote no checkpoint" in message
    for path in written:
        weights = load_checkpoint(path)["model"]
        assert all(torch.isfinite(w).all() for w in weights.values()), path
    assert records(run_dir)[-1] == {"_exit": 2}  # the exit code of the command


def test_skipping_non_finite_batches_never_tests_a_broken_best_checkpoint(tmp_path):
    """With skip, an epoch whose validation loss is not finite cannot be the best; with none finite, the run
    says so instead of reporting `test loss inf` with exit 0."""
    run_dir = tmp_path / "run"
    try:
        summary = train_in(run_dir, "optimizer=sgd", "optimizer.lr=1e6", "trainer.on_nonfinite=skip",
                           "trainer.epochs=2")
    except UserError as e:
        assert "no epoch ended with a finite validation loss" in str(e) or "weights hold NaN" in str(e)
    else:
        assert math.isfinite(summary["test/loss"])
    best = run_dir / "checkpoints" / "best.pt"
    if best.exists():
        assert all(torch.isfinite(w).all() for w in load_checkpoint(best)["model"].values())


def test_a_window_and_an_epoch_of_skipped_batches_log_no_loss():
    """Every batch skipped: no `train/loss` 0.0, no `train/loss_epoch` 0.0 (before: both logged 0.0)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    with torch.no_grad():
        model[1].bias.fill_(float("nan"))  # every loss NaN: every batch skipped
    cfg = to_typed(compose([*SMALL, "trainer.on_nonfinite=skip", "trainer.log_every_n_steps=2",
                            "optimizer.impl=for_loop"]))
    split = Split(torch.randint(0, 255, (256, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (256,)))
    from alexnet.data import Loader
    from alexnet.optim import build_optimizer, build_scheduler

    loader = Loader(split, 64, 32, [0.5] * 3, [0.25] * 3, torch.device("cpu"), train=True)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), 64, torch.device("cpu"))
    scheduler = build_scheduler(cfg.scheduler, optimizer, len(loader), 1)
    logged = []
    cfg.trainer.precision = type(cfg.trainer.precision)("fp32")
    stats, _ = train_one_epoch(model, loader, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False),
                               torch.device("cpu"), cfg.trainer, 0, 0, EpochProgress(),
                               lambda values, step: logged.append(values))
    assert logged and all("train/loss" not in values for values in logged)
    assert "train/loss_epoch" not in stats and stats["train/skipped_batches"] == len(loader)


def test_train_loss_is_the_plain_cross_entropy_next_to_the_smoothed_objective(tmp_path):
    """With label smoothing, train/loss compares with val/loss; train/objective is what was minimised."""
    summary_dir = tmp_path / "run"
    train_in(summary_dir, "trainer.label_smoothing=0.3", "trainer.log_every_n_steps=1")
    rows = [r for r in records(summary_dir) if "train/loss" in r]
    assert rows and all("train/objective" in r for r in rows)
    # near chance the smoothed objective exceeds the plain loss only a little, but they are not the same number
    assert all(r["train/loss"] != r["train/objective"] for r in rows)
    epoch = next(r for r in records(summary_dir) if "train/loss_epoch" in r)
    assert "train/objective_epoch" in epoch and epoch["train/loss_epoch"] != epoch["train/objective_epoch"]
    plain_dir = tmp_path / "plain"
    train_in(plain_dir, "trainer.log_every_n_steps=1")
    assert not any("train/objective" in r for r in records(plain_dir))


def test_plain_loss_is_computed_exactly():
    """The logged train/loss is F.cross_entropy without smoothing on the same logits, step for step."""
    import torch.nn.functional as F

    from alexnet.data import Loader
    from alexnet.optim import build_optimizer, build_scheduler

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    cfg = to_typed(compose([*SMALL, "trainer.label_smoothing=0.4", "trainer.log_every_n_steps=1",
                            "optimizer=sgd", "optimizer.lr=1e-30", "optimizer.weight_decay=0",
                            "optimizer.momentum=0"]))
    cfg.trainer.precision = type(cfg.trainer.precision)("fp32")
    split = Split(torch.randint(0, 255, (128, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (128,)))
    loader = Loader(split, 64, 32, [0.5] * 3, [0.25] * 3, torch.device("cpu"), train=True)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), 64, torch.device("cpu"))
    scheduler = build_scheduler(cfg.scheduler, optimizer, len(loader), 1)
    logged = []
    train_one_epoch(model, loader, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False),
                    torch.device("cpu"), cfg.trainer, 0, 0, EpochProgress(), lambda v, s: logged.append(v))
    with torch.no_grad():
        expected = [F.cross_entropy(model(x), y).item() for x, y in loader.batches(0)]
        smoothed = [F.cross_entropy(model(x), y, label_smoothing=0.4).item() for x, y in loader.batches(0)]
    assert [v["train/loss"] for v in logged] == pytest.approx(expected, abs=1e-5)
    assert [v["train/objective"] for v in logged] == pytest.approx(smoothed, abs=1e-5)


# ------------------------------------------------------------------------------------------------- the test

def test_limit_batches_never_cuts_the_test_of_a_class_ordered_folder(tmp_path):
    """ImageFolder test splits are ordered by class: cut to a batch they held one class (before: test acc from
    3 classes, and 0.0 for classes that had no images)."""
    classes = tuple(f"c{i}" for i in range(10))
    root = make_imagefolder(tmp_path / "ds", classes=classes, per_class=12)
    summary = alexnet.train([*TINY, "model.width=0.125", "data=imagefolder", f"data.root={root}",
                             f"data.cache_dir={tmp_path / 'cache'}", "data.val_size=20", "data.batch_size=16",
                             "data.eval_batch_size=20", "trainer.limit_batches=1", "trainer.epochs=1",
                             "wandb.mode=disabled"], run_dir=tmp_path / "run")
    assert summary["test/images"] == 120
    results = json.loads((tmp_path / "run" / "test_results.json").read_text())
    assert results["images"] == 120 and sorted(results["per_class_acc"]) == list(classes)


def test_a_test_subset_is_stated_and_spans_the_classes(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="alexnet"):
        summary = train_in(tmp_path / "run", "data.test_size=400", "trainer.limit_test_images=100")
    assert summary["test/images"] == 100
    assert any("100 of 400 images (a seeded random subset" in r.getMessage() for r in caplog.records)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 300), st.integers(1, 400), st.integers(0, 2**31))
def test_test_subset_is_seeded_sorted_and_unique(n, limit, seed):
    split = Split(torch.zeros(n, 3, 1, 1, dtype=torch.uint8), torch.arange(n))
    subset = scored_test_split(split, limit, seed)
    ids = subset.labels.tolist()
    assert len(ids) == min(n, limit) and ids == sorted(set(ids))
    assert ids == scored_test_split(split, limit, seed).labels.tolist()


def test_per_class_accuracy_is_absent_for_a_class_without_images():
    confusion = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 3)
    assert per_class_accuracy(confusion) == [0.5, 1.0, None]


# ------------------------------------------------------------------------------------ choosing the run dir

def interrupted(root: Path, name: str, overrides: list[str]) -> Path:
    run_dir = root / "2026-11-26" / name
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"x")
    (run_dir / "metrics.jsonl").write_text('{"_step": 1}\n{"_exit": 130}\n')
    return run_dir


@settings(max_examples=30, deadline=None)
@given(st.permutations(["optimizer=adam", "model.dropout=.25", "seed=3", "+experiment=dropout", "seed=3"]))
def test_resume_auto_matches_the_same_overrides_in_any_order_and_spelling(tmp_path_factory, order):
    root = tmp_path_factory.mktemp("outputs")
    run_dir = interrupted(root, "10-00-00", ["optimizer=adam", "model.dropout=0.25", "seed=3",
                                              "experiment=dropout"])
    try:
        assert rundir.choose_run_dir(str(root), "2026-11-26/11-00-00", order, "auto") == str(run_dir)
    finally:
        rundir.unlock(run_dir)


def test_a_fresh_start_names_the_interrupted_run_it_leaves(tmp_path):
    run_dir = interrupted(tmp_path, "10-00-00", ["seed=3"])
    rundir.NOTES.clear()
    chosen = rundir.choose_run_dir(str(tmp_path), "2026-11-26/11-00-00", ["seed=3"], "never")
    rundir.unlock(Path(chosen))
    assert chosen != str(run_dir) and str(run_dir) in rundir.NOTES.pop() and not rundir.NOTES


HOLD = """
import sys, time
from alexnet import rundir
assert rundir.try_lock(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder():
    """Another process that holds a run dir's lock until it is killed."""
    procs = []

    def hold(run_dir: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True,
                                cwd=REPO)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_run_dir_has_one_writer_and_the_os_frees_a_dead_ones_lock(tmp_path, holder):
    run_dir = interrupted(tmp_path, "10-00-00", ["seed=3"])
    proc = holder(run_dir)
    rundir.NOTES.clear()
    # the same command again: it leaves the held run alone, says so, and starts its own dir
    chosen = Path(rundir.choose_run_dir(str(tmp_path), "2026-11-26/10-00-00", ["seed=3"], "auto"))
    try:
        assert chosen == tmp_path / "2026-11-26" / "10-00-00-2"  # the fresh name was taken too: the held dir
        assert "is being resumed by pid" in rundir.NOTES.pop()
    finally:
        rundir.unlock(chosen)
    with pytest.raises(rundir.RunDirBusy, match=f"being written by pid {proc.pid}"):
        train_in(run_dir)  # an explicit run dir that another process writes: the contract, nothing touched
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == b"x"
    proc.kill()
    proc.wait()
    assert rundir.try_lock(run_dir)  # a killed holder leaves no stale lock
    rundir.unlock(run_dir)


def test_two_processes_resuming_the_same_interrupted_run_write_two_run_dirs(tmp_path):
    """The same command twice at once after an interruption (two terminals, a job array): one resumes the run,
    the other starts its own dir; each metrics.jsonl holds one run (before: both resumed into one dir)."""
    args = [*SMALL, "trainer.epochs=2", "trainer.log_every_n_steps=1", "trainer.checkpoint_every_n_steps=2"]
    env = {**os.environ, "WANDB_SILENT": "true", "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "alexnet.run", *args], cwd=tmp_path, text=True, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    first, deadline = start(), time.monotonic() + 120
    while first.poll() is None and time.monotonic() < deadline:  # interrupt it after a few steps
        metrics = list(tmp_path.glob("outputs/*/*/metrics.jsonl"))
        if metrics and any("train/loss" in line and '"_step": 4' in line for line in metrics[0].open()):
            first.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    assert first.wait(timeout=120) == 128 + signal.SIGTERM, first.stdout.read()
    procs = [start(), start()]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum("is being resumed by pid" in out for out in outputs) == 1, outputs
    dirs = sorted(p.parent for p in tmp_path.glob("outputs/*/*/metrics.jsonl"))
    assert len(dirs) == 2
    for run_dir in dirs:
        rows = records(run_dir)
        steps = [r["_step"] for r in rows if "train/loss" in r]
        assert steps == sorted(set(steps)), run_dir  # no step twice
        assert sum("_summary" in r for r in rows) == 1 and rows[-1] == {"_exit": 0}, run_dir


def test_a_format_1_checkpoint_still_evaluates_but_does_not_resume(tmp_path):
    """Before format 2 the model's stages were unnamed (`0.0.weight`); evaluation renames them, resume refuses."""
    from alexnet.models import model_from_config
    from alexnet.state import upgrade

    cfg = to_typed(compose(SMALL))
    model = model_from_config(cfg.model, num_classes=10)
    old = {"model": {k.replace("features.", "0.", 1).replace("classifier.", "1.", 1): v
                     for k, v in model.state_dict().items()}, "config": to_dict(compose(SMALL))}
    assert all(k[0] in "01" for k in old["model"])
    model_from_config(cfg.model, num_classes=10).load_state_dict(upgrade(old)["model"])  # strict: every key
    from alexnet.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "old" / "last.pt", {**old, "epoch": 1})
    with pytest.raises(UserError, match="format-1 checkpoint"):
        train_in(tmp_path / "run", f"trainer.resume={tmp_path / 'old' / 'last.pt'}")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ------------------------------------------------------------------------ found by the hostile trial

def test_a_resume_from_an_older_checkpoint_tests_the_best_weights_of_that_history(tmp_path):
    """last.prev.pt is a step behind best.pt: the run that continues it must score the best weights *it* knows
    (they travel in every last.pt), never a later best.pt of the history it left behind."""
    first = tmp_path / "first"
    train_in(first, "trainer.epochs=3", "model.dropout=0.0", "optimizer.lr=0.003")
    previous = load_checkpoint(first / "checkpoints" / "last.prev.pt")
    assert previous["epoch"] == 2
    rows = [r for r in records(first) if "val/acc" in r]
    summary = train_in(tmp_path / "second", "trainer.epochs=2", "model.dropout=0.0", "optimizer.lr=0.003",
                       f"trainer.resume={first / 'checkpoints' / 'last.prev.pt'}")
    best_of_two = max(r["val/acc"] for r in rows[:2])
    assert summary["val/best_acc"] == pytest.approx(best_of_two) and summary["epochs"] == 2
    best = load_checkpoint(tmp_path / "second" / "checkpoints" / "best.pt")
    assert best["epoch"] <= 2 and best["val_acc"] == pytest.approx(best_of_two)
    assert all(torch.equal(best["model"][k], previous["best_weights"][k]) for k in best["model"])


def test_a_lost_best_pt_is_exported_again_and_the_run_finishes(tmp_path):
    """A kill between last.pt and best.pt (or a deleted best.pt) no longer leaves a run that cannot finish."""
    run_dir = tmp_path / "run"
    train_in(run_dir)
    (run_dir / "checkpoints" / "best.pt").unlink()
    summary = train_in(run_dir, "trainer.epochs=2")
    assert summary["epochs"] == 2 and (run_dir / "checkpoints" / "best.pt").is_file()
    summary = train_in(run_dir, "trainer.epochs=3", "trainer.save_checkpoints=false")  # may change on resume
    assert summary["epochs"] == 3


def test_a_best_pt_cannot_be_resumed_and_nothing_is_written(tmp_path):
    train_in(tmp_path / "first")
    with pytest.raises(UserError, match="holds weights only"):
        train_in(tmp_path / "second", f"trainer.resume={tmp_path / 'first' / 'checkpoints' / 'best.pt'}")
    assert not [p for p in (tmp_path / "second").rglob("*") if p.is_file() and p.name not in ("run.log", ".lock")]


def test_fewer_epochs_than_the_checkpoint_trained_are_refused(tmp_path):
    run_dir = tmp_path / "run"
    train_in(run_dir, "trainer.epochs=2")
    before = snapshot(run_dir)
    with pytest.raises(UserError, match="trainer.epochs>=2"):
        train_in(run_dir, "trainer.epochs=1")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("extra", [[], ["trainer.save_checkpoints=false"]], ids=["checkpoints", "no-checkpoints"])
def test_the_same_command_on_a_finished_run_does_nothing(tmp_path, extra):
    run_dir = tmp_path / "run"
    first = train_in(run_dir, *extra)
    before = snapshot(run_dir)
    assert train_in(run_dir, *extra) == pytest.approx(first)
    assert snapshot(run_dir) == before  # no second test, no second W&B run, no retraining


def test_ctrl_c_during_the_final_test_stops_cleanly_and_the_test_runs_again(tmp_path, monkeypatch, caplog):
    import signal as signals

    import alexnet.training as training

    real_evaluate = training.evaluate

    def evaluate(*args, should_stop=None, **kwargs):
        if should_stop is not None:  # the final test: Ctrl-C arrives now
            os.kill(os.getpid(), signals.SIGINT)
        return real_evaluate(*args, should_stop=should_stop, **kwargs)

    monkeypatch.setattr(training, "evaluate", evaluate)
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="alexnet"), pytest.raises(SystemExit) as stopped:
        train_in(run_dir)
    assert stopped.value.code == 130 and records(run_dir)[-1] == {"_exit": 130}
    assert any("during the final test (all 1 epochs are checkpointed)" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    assert train_in(run_dir)["epochs"] == 1  # the same command scores it
    rows = records(run_dir)
    assert sum("_summary" in r for r in rows) == 1 and rows[-1] == {"_exit": 0}


def test_the_exit_code_recorded_is_the_commands(tmp_path):
    """A user error ends the CLI with 2, and metrics.jsonl says 2 (before: 1)."""
    with pytest.raises(UserError):
        train_in(tmp_path / "run", "optimizer=sgd", "optimizer.lr=1e6", "trainer.epochs=2")
    assert records(tmp_path / "run")[-1] == {"_exit": 2}


def test_a_sweep_run_again_with_one_value_changed_leaves_every_job_as_it_was(tmp_path):
    from conftest import run_cli

    sweep = ["-m", *SMALL, "model.dropout=0.0,0.25", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    assert run_cli("run", sweep, tmp_path).returncode == 0
    jobs = [tmp_path / "sweep" / str(n) for n in (0, 1)]
    before = [{**snapshot(job), "run.log": (job / "run.log").read_bytes()} for job in jobs]
    multirun_yaml = (tmp_path / "sweep" / "multirun.yaml").read_text()
    again = run_cli("run", [*sweep[:-2], "model.dropout=0.0,0.5", sweep[-1]], tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "holds a sweep of other overrides (only there: model.dropout=0.0,0.25; only now: model.dropout=0.0,0.5)" \
        in again.stderr
    after = [{**snapshot(job), "run.log": (job / "run.log").read_bytes()} for job in jobs]
    assert after == before  # refused before any job started: run.log too
    assert (tmp_path / "sweep" / "multirun.yaml").read_text() == multirun_yaml


def test_the_api_raises_the_clis_message_for_a_mistyped_override_and_makes_no_run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"unknown config key 'modle.dropout'. Did you mean 'model.dropout'\?"):
        alexnet.train(["modle.dropout=0.1"])
    with pytest.raises(UserError, match="optimizer.lr=-1.0 is not allowed"):
        alexnet.train(["data=synthetic", "optimizer.lr=-1"])
    assert not (tmp_path / "outputs").exists() and not rundir._HELD  # no run dir made, no lock held


@pytest.mark.parametrize("key, old, other", [("data.random_erasing", 0.0, 0.5), ("data.crop_scale", 1.0, 0.35),
                                             ("trainer.ema_decay", None, 0.999)])
def test_a_checkpoint_from_before_a_new_field_resumes_when_the_field_keeps_its_old_behaviour(key, old, other):
    """These fields came later: a checkpoint without one was trained with its old value, so that value is no
    difference; asked for another value, it is one."""
    group, name = key.split(".")
    before = {group: {"seed_field": 1}}
    assert config_differences(before, {group: {"seed_field": 1, name: old}}) == []
    assert config_differences(before, {group: {"seed_field": 1, name: other}}) == [(key, old, other)]


def test_the_api_picks_the_run_dir_as_the_cli_does(tmp_path, monkeypatch):
    """Without run_dir: outputs/<date>/<time>. (It raised InterpolationKeyError: hydra.run.dir was resolved after
    the hydra node was cut from the config.)"""
    monkeypatch.chdir(tmp_path)
    summary = alexnet.train([*TINY, "model.width=0.0625", "debug=smoke", "wandb.mode=disabled"])
    (run_dir,) = tmp_path.glob("outputs/*/*")
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}", str(run_dir.relative_to(tmp_path / "outputs")))
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-2])["_summary"] == summary


def test_a_report_leaves_out_a_damaged_run_and_says_why(tmp_path, capsys):
    """One unparsable .hydra/config.yaml leaves that run out, named, instead of crashing the whole report; an
    unwritable --out is the contract (exit 2, one line)."""
    from alexnet.report import main as report

    train_in(tmp_path / "runs" / "good")
    damaged = tmp_path / "runs" / "damaged" / ".hydra"
    damaged.mkdir(parents=True)
    (damaged / "config.yaml").write_text("model: [unclosed\n")
    assert report([str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    assert "damaged (unreadable .hydra/config.yaml" in capsys.readouterr().err
    assert (tmp_path / "report" / "report.md").is_file()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit) as refused:
        report([str(tmp_path / "runs"), "--out", str(tmp_path / "a-file")])
    assert refused.value.code == 2
    assert "error: cannot write the report to" in capsys.readouterr().err


def test_a_stopped_sweep_job_names_the_sweep_dir_to_resume_with(caplog):
    """`run the same command again` would start a new sweep dir; the message gives the command that resumes."""
    import types

    from alexnet.training import RunContext, stop

    class Signals:
        def stop(self):
            raise SystemExit(130)

    run = types.SimpleNamespace(
        state=types.SimpleNamespace(epoch=0, step=7), cfg=to_typed(compose(SMALL)),
        ctx=RunContext(Path("multirun/d/t/0"), sweep_dir="multirun/d/t",
                       command="python -m alexnet.run -m model.dropout=0,0.5 hydra.sweep.dir=old"),
        checkpoints=types.SimpleNamespace(folder=Path("multirun/d/t/0/checkpoints")))
    with caplog.at_level(logging.WARNING, logger="alexnet"), pytest.raises(SystemExit):
        stop(run, Signals())
    assert ("run the same command with hydra.sweep.dir=multirun/d/t: python -m alexnet.run -m model.dropout=0,0.5 "
            "hydra.sweep.dir=multirun/d/t to resume") in caplog.records[-1].getMessage()


def test_a_config_that_cannot_fit_the_device_is_refused_before_anything_is_allocated(tmp_path, monkeypatch):
    import alexnet.training as training

    monkeypatch.setattr(training, "free_bytes", lambda device: 2**20)  # a 1 MiB device
    with pytest.raises(UserError, match=r"this run needs about .* GiB .* but cpu has 0.0 GiB free. Fix: lower"):
        train_in(tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / ".hydra").exists()
