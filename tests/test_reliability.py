"""Fault injection: kills at random steps and damaged checkpoints through the real CLI; failing disks and NaNs
in this process (alexnet.train, with monkeypatched writes: the package itself has no test hooks); sweeps.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import alexnet
from alexnet.checkpoint import CheckpointError, CheckpointWriter, load_checkpoint
from alexnet.engine import NonFiniteLoss
from alexnet.resume import restore_rng_state, rng_state
from alexnet.state import restore_scaler
from conftest import TINY, run_cli
from wandb_records import offline_runs, read_run

# 3 epochs of 16 steps; a checkpoint every 4 steps; deterministic kernels.
RESUMABLE = [*TINY, "model.width=0.125", "data.train_size=1200", "data.val_size=200", "data.test_size=200",
             "trainer.epochs=3", "trainer.log_every_n_steps=1", "trainer.checkpoint_every_n_steps=4",
             "trainer.deterministic=true"]
TOTAL_STEPS = 45  # 3 epochs of 15 full batches (1,000 training images, batch 64)
COMPARED = ("train/loss", "train/lr", "train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/best_acc")



def only_run_dir(cwd: Path) -> Path:
    (run_dir,) = {p.parent for p in cwd.glob("outputs/*/*/.hydra")}
    return run_dir


def records(run_dir: Path) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def compared_metrics(run_dir: Path) -> list:
    rows = records(run_dir)
    history = [(r["_step"], k, r[k]) for r in rows if "_step" in r for k in COMPARED if k in r]
    summary = [r["_summary"] for r in rows if "_summary" in r]
    return history + [(k, summary[-1][k]) for k in ("test/acc", "test/loss", "val/best_acc")]


def final_weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def max_step(run_dir: Path | None) -> int:
    if run_dir is None or not (run_dir / "metrics.jsonl").exists():
        return 0
    return max((r["_step"] for r in records(run_dir) if "_step" in r), default=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same run, left alone (in this process: the same computation as the CLI's, without its start-up)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    alexnet.train([*RESUMABLE, "wandb.mode=disabled"], run_dir=run_dir)
    return run_dir


def start(cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_SILENT": "true", "XDG_CACHE_HOME": str(cwd / "cache")}
    env.pop("WANDB_MODE", None)
    return subprocess.Popen([sys.executable, "-m", "alexnet.run", *RESUMABLE], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_at(proc: subprocess.Popen, cwd: Path, target: int, signum: int) -> int:
    """Wait until training reaches `target` steps, send `signum`, return the exit code."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        dirs = list(cwd.glob("outputs/*/*/metrics.jsonl"))
        if dirs and max_step(dirs[0].parent) >= target:
            proc.send_signal(signum)
            break
        time.sleep(0.05)
    proc.wait(timeout=120)
    return proc.returncode


def interrupted_chain(cwd: Path, kills: list[int], seed: int) -> list[tuple[str, int, int]]:
    """Kill the run with each signal in `kills` at random steps, resuming in between; returns what happened."""
    rng = random.Random(seed)
    planned = sorted(rng.sample(range(3, TOTAL_STEPS - 8), len(kills)))
    happened = []
    for signum, target in zip(kills, planned):
        run_dir = next((p.parent for p in cwd.glob("outputs/*/*/metrics.jsonl")), None)
        target = max(target, max_step(run_dir) + 3)  # real progress in this process, not stale lines
        code = kill_at(start(cwd), cwd, target, signum)
        happened.append((signal.Signals(signum).name, target, code))
    final = start(cwd)
    _, stderr = final.communicate(timeout=300)
    assert final.returncode == 0, stderr[-3000:]
    return happened


@pytest.mark.parametrize("seed,kills", [
    (0, [signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGUSR1]),
    pytest.param(1, [signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGTERM],
                 marks=pytest.mark.slow),
    pytest.param(2, [signal.SIGUSR1, signal.SIGKILL, signal.SIGKILL], marks=pytest.mark.slow),
])
def test_killed_and_resumed_run_matches_the_uninterrupted_one_bit_for_bit(reference, tmp_path, seed, kills):
    happened = interrupted_chain(tmp_path, kills, seed)
    expected_codes = {"SIGTERM": 143, "SIGINT": 130, "SIGUSR1": 138, "SIGKILL": -9}
    assert [code for _, _, code in happened] == [expected_codes[name] for name, _, _ in happened], happened
    run_dir = only_run_dir(tmp_path)  # every resume continued the same run dir
    resumed, alone = final_weights(run_dir), final_weights(reference)
    assert resumed.keys() == alone.keys()
    assert all(torch.equal(resumed[k], alone[k]) for k in alone), "final weights differ"
    assert compared_metrics(run_dir) == compared_metrics(reference)
    steps = [r["_step"] for r in records(run_dir) if "_step" in r and "val/acc" not in r]
    assert steps == sorted(set(steps)) and steps[-1] == TOTAL_STEPS  # appended without duplicate steps
    # One W&B run, continued by every resume. (A SIGKILL can cut a process's offline record before W&B
    # wrote its run header: metrics.jsonl, not W&B's buffer, is the record that survives a SIGKILL.)
    runs = [read_run(p) for p in offline_runs(run_dir)]
    assert len(runs) == len(kills) + 1 and len({r.run_id for r in runs if r.run_id}) == 1, \
        (happened, [p.parent.name for p in offline_runs(run_dir)], [r.exit_code for r in runs])
    assert runs[-1].run_id and runs[-1].exit_code == 0


def train_here(tmp_path: Path, *overrides: str) -> dict:
    """The RESUMABLE run in this process (alexnet.train), where the CLI is not the point; W&B off."""
    return alexnet.train([*RESUMABLE, "wandb.mode=disabled", *overrides], run_dir=tmp_path / "run")


@pytest.fixture
def interrupted(tmp_path) -> Path:
    """The first epoch of the RESUMABLE run, in this process: last.pt (its end) and last.prev.pt (step 12)."""
    train_here(tmp_path, "trainer.epochs=1")
    run_dir = tmp_path / "run"
    assert load_checkpoint(run_dir / "checkpoints/last.prev.pt")["step"] == 12
    return run_dir


@pytest.mark.parametrize("damage,why", [
    (lambda data: data[:len(data) // 2], "is unreadable"),  # truncated
    (lambda data: data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1:],
     "is corrupt: its content does not match its SHA-256 digest"),  # one flipped byte, which torch misses
])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(reference, interrupted, damage, why, caplog):
    last, previous = interrupted / "checkpoints/last.pt", interrupted / "checkpoints/last.prev.pt"
    last.write_bytes(damage(last.read_bytes()))
    with caplog.at_level(logging.WARNING):
        train_here(interrupted.parent)  # all 3 epochs: continues from step 12
    warning = next(r.getMessage() for r in caplog.records if "previous" in r.getMessage())
    assert str(last) in warning and str(previous) in warning and why in warning
    final = final_weights(interrupted)
    assert all(torch.equal(final[k], v) for k, v in final_weights(reference).items())  # still exact


def test_both_checkpoints_damaged_is_a_clear_error(interrupted):
    for name in ("last.pt", "last.prev.pt"):
        path = interrupted / "checkpoints" / name
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="the previous checkpoint is damaged too") as error:
        train_here(interrupted.parent)
    assert "trainer.resume=never" in str(error.value)


def test_disk_full_mid_run_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real_save, allowed = torch.save, [3]

    def save(*args, **kwargs):  # the disk fills up after 3 checkpoint writes
        if allowed[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        allowed[0] -= 1
        return real_save(*args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(CheckpointError) as error:
        train_here(tmp_path)
    message = str(error.value)
    assert "could not write checkpoint" in message and "No space left on device" in message
    assert "is intact" in message and "run the same command again to resume" in message
    run_dir = tmp_path / "run"
    kept = load_checkpoint(run_dir / "checkpoints/last.pt")  # verifies its digest
    assert kept["step"] == 12  # the third write: steps 4, 8, 12
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # no half-written file left behind
    assert records(run_dir)[-1] == {"_exit": 2}  # a user error: the exit code of the command
    monkeypatch.setattr(torch, "save", real_save)  # space freed: the same run resumes and finishes
    assert train_here(tmp_path)["steps"] == TOTAL_STEPS


def test_an_unusable_run_dir_stops_before_training(tmp_path, monkeypatch):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30 - 2**20, 2**20))
    with pytest.raises(CheckpointError, match="MiB free but checkpoints need about"):
        train_here(tmp_path)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained
    monkeypatch.undo()
    real_write = Path.write_bytes

    def write_bytes(self, data):
        if self.name == ".write-probe":
            raise OSError(errno.EROFS, "Read-only file system")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    with pytest.raises(CheckpointError, match=r"is not writable \(Read-only file system\)"):
        train_here(tmp_path)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_nan_stops_with_step_loss_and_lr_and_keeps_the_last_good_checkpoint(tmp_path):
    # The lr ramps up over two epochs to 100: the first steps are fine and checkpointed (step 4), then the loss
    # blows up (step 6 with one thread and with two; at lr 10 one thread trained through, two did not).
    with pytest.raises(NonFiniteLoss) as error:
        train_here(tmp_path, "optimizer=sgd", "optimizer.lr=100", "scheduler.warmup_epochs=2")
    message, run_dir = str(error.value), tmp_path / "run"
    assert "non-finite training loss" in message and "at step" in message and "learning rate" in message
    assert f"The last good checkpoint is {run_dir / 'checkpoints' / 'last.pt'} (epoch 1, batch 4, step 4)" \
        in message  # what is on disk, truthfully
    last = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    bad_step = int(message.split("at step ")[1].split(" ")[0])
    assert last["step"] < bad_step


def test_skip_mode_trains_through_counts_and_never_tests_a_broken_model(tmp_path):
    """The lr ramps to 1e4: batches are skipped and counted, and the epoch ends with a validation loss that is not
    finite. It cannot be the best checkpoint, so no best exists to test: the run says so (exit 2 from the CLI;
    before: `test loss inf`, exit 0)."""
    with pytest.raises(NonFiniteLoss, match="no epoch ended with a finite validation loss"):
        train_here(tmp_path, "trainer.epochs=1", "trainer.on_nonfinite=skip", "optimizer=sgd", "optimizer.lr=1e4",
                   "scheduler.warmup_epochs=1")
    run_dir = tmp_path / "run"
    epoch_row = next(r for r in records(run_dir) if "val/acc" in r)
    assert epoch_row["train/skipped_batches"] > 0 and epoch_row["val/loss"] in ("nan", "inf")
    assert not (run_dir / "checkpoints" / "best.pt").exists() and "val/best_acc" not in epoch_row


def test_multirun_records_a_failed_job_and_runs_the_rest(tmp_path):
    # lr=1e30 passes every check (it is finite) and fails in training: the sweep's pre-check cannot catch it
    result = run_cli("run", ["-m", *TINY, "debug=smoke", "data.train_size=600", "data.val_size=100",
                             "optimizer.lr=1e30,0.001"], tmp_path)
    assert result.returncode == 1
    assert "1 job(s) of this sweep failed" in result.stderr
    assert "job 0 (" in result.stderr and "optimizer.lr=1e+30" in result.stderr
    assert "non-finite training loss" in result.stderr and "Traceback" not in result.stderr
    (sweep,) = tmp_path.glob("multirun/*/*")
    failure = json.loads((sweep / "0" / "failure.json").read_text())
    assert "optimizer.lr=1e+30" in failure["overrides"] and "non-finite" in failure["error"]
    assert records(sweep / "1")[-1] == {"_exit": 0}  # the other job finished


def test_fail_fast_stops_the_sweep_at_the_first_failure(tmp_path):
    result = run_cli("run", ["-m", *TINY, "debug=smoke", "data.train_size=600", "data.val_size=100",
                             "optimizer.lr=1e30,0.001", "fail_fast=true"], tmp_path)
    assert result.returncode == 2 and "stopping the sweep at its first failure" in result.stderr
    (sweep,) = tmp_path.glob("multirun/*/*")
    assert not (sweep / "1").exists()


def test_the_cuda_random_state_is_this_devices_and_resumes_on_fewer_gpus(monkeypatch):
    restored = {}
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.full((4,), device.index, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.update({device.index: state}))
    saved = rng_state(None, torch.device("cuda", 5))  # written by the rank on GPU 5 of 8
    restore_rng_state(saved, torch.device("cuda", 0))  # resumed where there is one GPU
    assert restored[0].tolist() == [5] * 4 and list(restored) == [0]
    old_format = {**saved, "cuda": [torch.full((4,), i, dtype=torch.uint8) for i in range(2)]}  # every GPU's
    restore_rng_state(old_format, torch.device("cuda", 1))
    assert restored[1].tolist() == [1] * 4
    restored.clear()
    restore_rng_state(old_format, torch.device("cuda", 3))  # a GPU the old checkpoint knew nothing of
    restore_rng_state(saved, torch.device("cpu"))
    assert restored == {}


def test_a_run_resumes_in_another_precision_with_a_fresh_scaler(caplog):
    bf16_state = torch.amp.GradScaler("cpu", enabled=False).state_dict()
    with pytest.raises(RuntimeError):  # what resuming a bf16 checkpoint in fp16 did before
        torch.amp.GradScaler("cpu", enabled=True).load_state_dict(bf16_state)
    fp16 = torch.amp.GradScaler("cpu", enabled=True, init_scale=2.0**16)
    with caplog.at_level("WARNING", logger="alexnet"):
        restore_scaler(fp16, bf16_state, "bf16", "fp16")
    assert fp16.get_scale() == 2.0**16 and "resuming a bf16 run in fp16: the fp16 gradient scaler starts fresh" \
        in caplog.text
    restore_scaler(torch.amp.GradScaler("cpu", enabled=False), fp16.state_dict(), "fp16", "bf16")  # no error
    saved = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    same = torch.amp.GradScaler("cpu", enabled=True)
    restore_scaler(same, saved.state_dict(), "fp16", "fp16")
    assert same.get_scale() == 1024.0


def test_checkpoints_written_in_the_background_hold_the_state_at_save_time(tmp_path):
    writer = CheckpointWriter()
    weights = torch.zeros(1000)
    writer.save(tmp_path / "last.pt", {"model": {"w": weights}, "config": {}, "step": 1})
    weights += 1  # training goes on while the checkpoint is written
    writer.save(tmp_path / "last.pt", {"model": {"w": weights}, "config": {}, "step": 2})  # waits for the first, keeps it as prev
    writer.wait()
    assert load_checkpoint(tmp_path / "last.pt")["model"]["w"].eq(1).all()
    assert load_checkpoint(tmp_path / "last.prev.pt")["model"]["w"].eq(0).all()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    writer.save(blocker / "last.pt", {"step": 3})  # cannot be written: the error comes at the next wait
    with pytest.raises(CheckpointError, match="could not write checkpoint"):
        writer.wait()
    writer.wait()  # reported once
