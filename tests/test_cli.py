"""The real CLI in a subprocess: a run end to end, a multirun, the layer summary and every user error."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet.report import load_local_run
from conftest import TINY
from wandb_records import offline_runs, read_run


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("outputs/*/*/.hydra")) + sorted(
        p.parent for p in root.glob("multirun/*/*/*/.hydra"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real two-epoch run on synthetic data, shared by the assertions below."""
    from conftest import run_cli

    cwd = tmp_path_factory.mktemp("run")
    result = run_cli("run", [*TINY, "trainer.epochs=2", "trainer.log_every_n_steps=5", "wandb.tags=[ci,tiny]"],
                     cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(cwd)
    return result, run_dir


def test_run_learns_far_above_chance(trained):
    _, run_dir = trained
    record = load_local_run(run_dir)
    assert record.status == "finished"
    assert record.summary["test/acc"] > 0.6  # chance is 0.1
    assert record.summary["val/best_acc"] > 0.6


def test_run_dir_holds_everything(trained):
    result, run_dir = trained
    for path in [".hydra/config.yaml", ".hydra/overrides.yaml", "run.log", "metrics.jsonl",
                 "checkpoints/last.pt", "checkpoints/best.pt"]:
        assert (run_dir / path).is_file(), path
    assert len(offline_runs(run_dir)) == 1
    log = (run_dir / "run.log").read_text()
    assert "config:" in log and "arch: alexnet_cifar" in log and f"run dir: {run_dir}" in log
    assert "wandb sync" in log  # offline: says how to upload
    ckpt = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["model"]["width"] == 0.25 and len(ckpt["classes"]) == 10


def test_metrics_jsonl_is_the_complete_local_record(trained):
    _, run_dir = trained
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    history = [r for r in records if "_step" in r]
    steps_per_epoch = 4500 // 64  # training drops the partial last batch
    assert [r["_step"] for r in history if "train/loss" in r and "val/acc" not in r][:3] == [5, 10, 15]
    epochs = [r for r in history if "val/acc" in r]
    assert [r["epoch"] for r in epochs] == [1, 2] and epochs[-1]["_step"] == 2 * steps_per_epoch
    for key in ["train/acc", "val/loss", "val/acc", "train/images_per_sec", "epoch_time"]:
        assert all(key in r for r in epochs), key
    # train/elapsed: training seconds so far, the x-axis of time-to-accuracy
    assert epochs[1]["train/elapsed"] == pytest.approx(epochs[0]["train/time"] + epochs[1]["train/time"])
    assert set(records[-2]["_summary"]) >= {"test/acc", "test/loss", "val/best_acc", "params", "train/elapsed"}
    assert records[-1] == {"_exit": 0}


def test_wandb_run_holds_config_history_and_summary(trained):
    _, run_dir = trained
    (path,) = offline_runs(run_dir)
    run = read_run(path)
    assert run.job_type == "train" and run.exit_code == 0
    assert run.tags == ["ci", "tiny"]
    assert "model=alexnet_cifar" in run.name and "model.width=0.25" in run.name
    assert run.config["model"]["arch"] == "alexnet_cifar" and run.config["optimizer"]["name"] == "adam"
    assert run.config["trainer"]["precision"] == "fp32"
    step_rows = [h for h in run.history if "train/loss" in h]
    assert len(step_rows) >= 2 * (71 // 5) and all("train/lr" in h for h in step_rows)
    epoch_rows = [h for h in run.history if "val/acc" in h]
    assert len(epoch_rows) == 2
    for key in ["train/acc", "val/loss", "train/images_per_sec", "epoch_time"]:
        assert all(key in h for h in epoch_rows), key
    local = load_local_run(run_dir).summary
    for key in ["test/acc", "test/loss", "val/best_acc", "params"]:
        assert run.summary[key] == pytest.approx(local[key]), key
    assert run.summary["params"] == 796_138  # alexnet_cifar at width 0.25, 10 classes


def test_multirun_gives_one_grouped_wandb_run_per_job(cli):
    result = cli("-m", *TINY, "debug=smoke", "data.train_size=600", "data.val_size=100", "model.dropout=0.0,0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    dirs = run_dirs(cli.cwd)
    assert len(dirs) == 2
    runs = [read_run(p) for d in dirs for p in offline_runs(d)]
    assert len(runs) == 2 and all(r.exit_code == 0 for r in runs)
    assert runs[0].group == runs[1].group and runs[0].group.startswith("multirun/")
    assert {r.config["model"]["dropout"] for r in runs} == {0.0, 0.5}
    assert runs[0].run_id != runs[1].run_id
    assert sorted(r.name.split(",")[-1] for r in runs) == ["model.dropout=0.0", "model.dropout=0.5"]


def test_summary_prints_the_seed_table(cli, shared):
    result = cli("model=alexnet", "model.final_relu=true", module="summary")
    assert result.returncode == 0, result.stderr
    seed = (shared / "seed" / "alexnet-cifar10-seed.md").read_text()
    for line in ["Conv2d-1           [-1, 96, 54, 54]          34,944", "Linear-14                 [-1, 4096]      26,218,496",
                 "Total params: 46,787,978", "Params size (MB): 178.48", "Input size (MB): 0.57"]:
        assert line in result.stdout and line in seed, line


def test_summary_of_another_variant(cli):
    result = cli("model=alexnet_cifar", "model.lrn=true", module="summary")
    assert result.returncode == 0, result.stderr
    assert "LocalResponseNorm-3" in result.stdout and "Total params: 12,652,426" in result.stdout


def layout(damage):
    """Set-up for a bad data layout: an ImageFolder tree under ./ds, then `damage` applied to it."""
    def make(cwd: Path) -> None:
        from test_data import make_imagefolder

        damage(make_imagefolder(cwd / "ds"))
    return make


def junk_cifar(cwd: Path) -> None:
    batches = cwd / "cifar" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (batches / name).write_bytes(b"not the CIFAR-10 file")


IMAGEFOLDER = ["data=imagefolder", "data.root=ds", "data.val_size=3"]
ERRORS = [  # (overrides, what the message must say, set-up of files in the working directory)
    (["model.dropout=1.5"], "model.dropout=1.5 is not allowed: a float in [0, 1)", None),
    (["model.dropuot=0.3"], "unknown config key 'model.dropuot'. Did you mean 'model.dropout'?", None),
    (["modle.dropout=0.3"], "unknown config key 'modle.dropout'. Did you mean 'model.dropout'?", None),
    (["seed=abc"], "seed=abc is not allowed: an integer", None),
    (["+experiment=dropot"], "experiment=dropot is not an option of `experiment`, which has: dropout,", None),
    (["-m", "model.dropout=0.0,abc"], "model.dropout=abc is not allowed: a number", None),
    (["-m", "model=alexnet_cifar", "model.input_size=32,8"], "alexnet_cifar needs inputs of at least 15x15", None),
    (["hydra.run.dir=outputs/earlier/metrics.jsonl"], "is a file. Fix: hydra.run.dir=PATH naming a folder", None),
    (["-m", "model.dropout=0.0,0.5", "--cfg", "job"], "-m and --cfg do not go together", None),
    (["model.dropout=[1"], "Fix the override's syntax", None),
    (["+model.dropuot=0.3"], "unknown config key 'model.dropuot'", None),
    (["model.input_size=big"], "model.input_size=big is not allowed: an integer", None),
    (["model=resnet"], "model=resnet is not an option of `model`, which has: alexnet, alexnet_cifar.", None),
    (["optimizer=rmsprop"], "optimizer=rmsprop is not an option of `optimizer`, which has: adam, adamw, sgd.", None),
    (["model.input_size=32"], "alexnet needs inputs of at least 67x67; use model.input_size>=67", None),
    (["model=alexnet_cifar", "model.input_size=8"], "alexnet_cifar needs inputs of at least 15x15", None),
    (["trainer.device=gpu"], "trainer.device=gpu is not allowed: one of auto, cpu, cuda.", None),
    (["trainer.precision=fp8"], "trainer.precision=fp8 is not allowed: one of auto, fp32, bf16, fp16.", None),
    (["trainer.on_nonfinite=ignore"], "trainer.on_nonfinite=ignore is not allowed: one of stop, skip.", None),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is not allowed: a positive, finite learning rate", None),
    (["optimizer.momentum=1.5"], "optimizer.momentum=1.5 is not allowed: a float in [0, 1)", None),
    (["data.batch_size=0"], "data.batch_size=0 is not allowed: an integer >= 1", None),
    (["trainer.epochs=0"], "trainer.epochs=0 is not allowed: an integer >= 1", None),
    (["trainer.checkpoint_every_n_steps=0"], "trainer.checkpoint_every_n_steps=0 is not allowed", None),
    (["trainer.resume=missing.pt"], "the path of an existing checkpoint file", None),
    (["scheduler=cosine", "scheduler.min_lr_ratio=2"], "scheduler.min_lr_ratio=2.0 is not allowed", None),
    (["data.std=[0,1,1]"], "data.std=[0.0, 1.0, 1.0] is not allowed: three positive values", None),
    (["data=synthetic", "data.val_size=6000"], "data.train_size=5000 is not allowed: more than data.val_size", None),
    (["data=cifar10", "data.root=nowhere", "data.download=false"],
     "CIFAR-10 not found or corrupted in data.root=nowhere", None),
    (["data=cifar10", "data.root=cifar", "data.download=false"], "CIFAR-10 not found or corrupted in data.root=cifar",
     junk_cifar),
    (["data=imagefolder", "data.root=nowhere"], "data.root=nowhere does not exist", None),
    (["data=imagefolder", "data.root=."], "is not a directory. Fix: data.root must hold train/<class>/*", None),
    (IMAGEFOLDER, "ds/train has no class folders",
     layout(lambda r: [__import__("shutil").rmtree(r / "train"), (r / "train").mkdir()])),
    (IMAGEFOLDER, "class folder ds/train/empty holds no images", layout(lambda r: (r / "train" / "empty").mkdir())),
    (IMAGEFOLDER, "ds/test has classes ['cat', 'dog', 'toad'] but ds/train has ['cat', 'dog', 'frog']",
     layout(lambda r: (r / "test" / "frog").rename(r / "test" / "toad"))),
    (IMAGEFOLDER, "cannot read image ds/train/cat/0001.png",
     layout(lambda r: (r / "train" / "cat" / "0001.png").write_bytes(b"not a png"))),
]


@pytest.mark.parametrize("overrides,message,setup", ERRORS, ids=[" ".join(o) + (f" [{s.__name__}]" if s else "")
                                                                 for o, _, s in ERRORS])
def test_user_errors_exit_cleanly(cli, overrides, message, setup):
    assert len(ERRORS) >= 20
    if setup:
        setup(cli.cwd)
    earlier = cli.cwd / "outputs" / "earlier"
    earlier.mkdir(parents=True)
    (earlier / "metrics.jsonl").write_text("{}\n")
    result = cli(*overrides, "trainer.device=cpu", "wandb.mode=offline")
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert message in output
    assert "Traceback" not in output
    assert (earlier / "metrics.jsonl").read_text() == "{}\n"  # no earlier run touched
    assert not list(cli.cwd.glob("outputs/*/*/checkpoints")) and not list(cli.cwd.glob("outputs/*/*/wandb"))
    assert not list(cli.cwd.glob("outputs/2*")) and not (cli.cwd / "multirun").exists()  # no run dir left behind


def test_cuda_requested_without_cuda(cli):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = cli(*TINY, "trainer.device=cuda")
    assert result.returncode == 2
    assert "trainer.device=cuda but CUDA is not available" in result.stderr and "Traceback" not in result.stderr


def test_full_error_shows_the_traceback(cli):
    result = cli("model.dropout=1.5", HYDRA_FULL_ERROR="1")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_relative_paths_still_work_when_hydra_changes_into_the_run_dir(cli):
    """hydra.job.chdir=true runs the job in its run dir: a relative data.root that exists was 'missing'."""
    from test_data import make_imagefolder

    make_imagefolder(cli.cwd / "ds", per_class=8)
    result = cli(*TINY, "data=imagefolder", "data.root=ds", "data.val_size=3", "data.batch_size=4", "debug=smoke",
                 "wandb.mode=disabled", "hydra.job.chdir=true")
    assert result.returncode == 0, result.stderr[-2000:]
    (config,) = cli.cwd.glob("outputs/*/*/.hydra/config.yaml")
    assert f"root: {cli.cwd / 'ds'}" in config.read_text()  # recorded as what was read


def run_in_a_terminal(argv: list[str], cwd: Path, columns: int = 120, timeout: float = 300) -> tuple[int, str]:
    """`argv` with stdin, stdout and stderr on a pseudo-terminal of `columns` columns, as in an interactive shell."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))  # a real terminal has a size
    env = {**os.environ, "WANDB_SILENT": "true", "XDG_CACHE_HOME": str(cwd / "cache")}
    env.pop("WANDB_MODE", None)
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    output, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        elif proc.poll() is not None:
            break
    else:
        proc.kill()
    os.close(master)
    return proc.wait(), output.decode(errors="replace")


def test_a_terminal_gets_a_progress_bar_with_the_loss_and_the_time_left(tmp_path):
    """On a terminal: a live bar per epoch (batches, rate, the epoch's ETA, the loss, the run's training time
    left), cleared before the epoch's line; none of the plain progress lines a log file gets."""
    import re

    code, output = run_in_a_terminal([sys.executable, "-m", "alexnet.run", *TINY, "model.width=0.125",
                                      "trainer.epochs=2", "hydra.run.dir=run"], tmp_path)
    assert code == 0, output[-3000:]
    clock = r"\d+:\d\d(?::\d\d)?"  # mm:ss, or h:mm:ss on a very busy machine
    frames = re.findall(rf"epoch (\d)/2:\s+\d+%\|[^|]*\| (\d+)/70 \[({clock})<({clock}|\?), "
                        r"(?:[\d.?]+batch/s|[\d.]+s/batch)"  # s/batch below one batch a second (a busy machine)
                        rf"(?:, loss ([\d.]+), ({clock}) of training left)?\]", output)
    # tqdm draws at most every 0.1 s, so which batches get a frame varies; the bar runs to the epoch's end
    assert {f[0] for f in frames} == {"1", "2"} and max(int(f[1]) for f in frames) >= 56, output[:3000]
    assert any(f[4] for f in frames if f[0] == "2"), "the loss and the time left reach the bar"
    lines = [line for line in re.split(r"[\r\n]+", output) if line.strip()]
    assert any(re.match(r"\[\d\d:\d\d:\d\d\] epoch 2/2 \| train loss", line) for line in lines)
    assert any("test (best checkpoint" in line for line in lines)
    assert not re.search(r"epoch \d \[\d+/70\] loss", output)  # the bar replaces the plain lines


def test_off_a_terminal_a_line_per_tenth_of_an_epoch(tmp_path):
    """A log file or a pipe gets no bar: a plain line about every tenth of an epoch, the last tenth left to the
    epoch's own line. In-process: pytest's stderr is not a terminal."""
    import re

    import alexnet

    alexnet.train([*TINY, "model.width=0.0625", "data.train_size=2100", "data.val_size=100", "data.test_size=50",
                   "data.batch_size=50", "trainer.epochs=1", "trainer.log_every_n_steps=1", "wandb.mode=disabled"],
                  run_dir=tmp_path / "run")
    log = (tmp_path / "run" / "run.log").read_text()
    batches = [int(b) for b in re.findall(r"epoch 1 \[(\d+)/40\] loss", log)]
    assert batches == [4, 8, 12, 16, 20, 24, 28, 32, 36], log
    assert "\r" not in log and "batch/s" not in log


def test_a_smoke_run_prints_about_a_dozen_lines_and_logs_everything_to_its_file(tmp_path):
    """The console: a header, a line per log step and epoch, the test; no config dump and none of W&B's own
    summary (its own lines come back with WANDB_SILENT=false). run.log keeps it all."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "WANDB_MODE")}
    result = subprocess.run([sys.executable, "-m", "alexnet.run", *TINY, "debug=smoke", "hydra.run.dir=run"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    assert 6 <= len(lines) <= 20, "\n".join(lines)
    assert not any(line.startswith("wandb:") for line in lines) and "config:" not in result.stdout
    assert "cudnn_benchmark" not in result.stdout  # a CUDA switch, said nothing on a CPU
    log = (tmp_path / "run" / "run.log").read_text()
    assert "config:\nmodel:\n  arch: alexnet_cifar" in log and "[alexnet][INFO]" in log
