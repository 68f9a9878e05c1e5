"""DistributedDataParallel on CPU with gloo: two ranks under torchrun, against a single process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet.checkpoint import load_checkpoint
from alexnet.models import build_model
from conftest import run_cli
from test_reliability import max_step
from wandb_records import offline_runs, read_run

# Dropout off: DDP draws dropout masks per rank, so only with it off is a single process the same function.
# SGD, not Adam: Adam's update of a near-zero gradient is about lr * sign(gradient), so it turns the float noise
# of summing gradients in another order into 1e-2 weight differences within 38 steps (measured).
SETUP = ["data=synthetic", "model=alexnet_cifar", "model.width=0.125", "model.dropout=0.0", "optimizer=sgd",
         "optimizer.lr=0.05",
         "trainer.epochs=2", "trainer.device=cpu", "wandb.mode=offline", "data.train_size=1200", "data.val_size=200",
         "data.test_size=200", "trainer.log_every_n_steps=1", "trainer.checkpoint_every_n_steps=4"]
EMA = "trainer.ema_decay=0.9"  # an average of the weights changes nothing trained: the weights still match `single`
WEIGHT_TOLERANCE = 1e-4  # max abs difference after 38 steps (float sums in another order); measured 1.5e-8


def torchrun(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_SILENT": "true", "XDG_CACHE_HOME": str(cwd / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "alexnet.run", "trainer.strategy=ddp", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def epochs(run_dir: Path) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["val/acc"], r["train/loss_epoch"], r["train/acc"]) for r in rows if "val/acc" in r]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("single")
    result = run_cli("run", SETUP, cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = {p.parent for p in cwd.glob("outputs/*/*/metrics.jsonl")}
    return run_dir


def test_two_ranks_train_the_same_model_as_one_process(single, tmp_path):
    proc = torchrun(SETUP, tmp_path)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    # The check is a collective (both ranks run it); only rank 0 prints, so no line appears twice
    assert output.count("all 2 ranks hold identical weights") == 1 and output.count("run dir:") == 1
    (run_dir,) = {p.parent for p in tmp_path.glob("outputs/*/*/.hydra")}  # one run dir, rank 0's
    (wandb_run,) = [read_run(p) for p in offline_runs(run_dir)]  # only rank 0 logs
    assert wandb_run.exit_code == 0
    ddp, alone = load_checkpoint(run_dir / "checkpoints/last.pt")["model"], load_checkpoint(
        single / "checkpoints/last.pt")["model"]
    assert max((ddp[k] - alone[k]).abs().max().item() for k in alone) < WEIGHT_TOLERANCE
    torch.manual_seed(0)  # the run's seed: the model is the first thing drawn from it
    init = build_model("alexnet_cifar", width=0.125, dropout=0.0).state_dict()
    assert max((init[k] - alone[k]).abs().max().item() for k in alone) > 100 * WEIGHT_TOLERANCE  # it did train
    for (e1, val1, loss1, acc1), (e2, val2, loss2, acc2) in zip(epochs(run_dir), epochs(single), strict=True):
        assert e1 == e2 and abs(val1 - val2) <= 0.01 and abs(loss1 - loss2) < 1e-3 and abs(acc1 - acc2) <= 0.01


def test_a_checkpoint_from_two_ranks_resumes_on_one(single, tmp_path):
    """With an average of the weights: the ranks' checkpoint holds it, and one process continues it."""
    proc = torchrun([*SETUP, EMA], tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        dirs = [p.parent for p in tmp_path.glob("outputs/*/*/metrics.jsonl")]
        if dirs and max_step(dirs[0]) >= 25:
            proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks
            break
        time.sleep(0.05)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "stopped at epoch 2" in output, output[-3000:]
    (run_dir,) = {p.parent for p in tmp_path.glob("outputs/*/*/.hydra")}
    result = run_cli("run", [*SETUP, EMA, f"hydra.run.dir={run_dir}"], tmp_path)  # one process, same run dir
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming from" in result.stdout
    last = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert last["ema"]["updates"] == last["step"]  # every step of both sittings averaged, none twice
    resumed, alone = last["model"], load_checkpoint(single / "checkpoints/last.pt")["model"]
    assert max((resumed[k] - alone[k]).abs().max().item() for k in alone) < WEIGHT_TOLERANCE
    steps = [json.loads(line).get("_step") for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s, line in zip(steps, (run_dir / "metrics.jsonl").read_text().splitlines())
                   if s is not None and "val/acc" not in line]
    assert train_steps == sorted(set(train_steps))  # no step twice
    assert [e[0] for e in epochs(run_dir)] == [1, 2]
