"""The error contract at its edges: Ctrl-C before training and a second Ctrl-C within it, a joblib sweep stopped
from the terminal and resumed, run dirs that cannot be made, files that are not checkpoints, and the run dir a
refused or interrupted run leaves behind (none, or the one it found, as it was)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TINY

import alexnet
from alexnet import rundir
from alexnet.checkpoint import NotACheckpoint
from alexnet.errors import RunDirRefused
from alexnet.evaluate import read_checkpoint
from alexnet.training import load_resume_path

# A Ctrl-C at a chosen moment, as a terminal sends it (SIGINT to the process group): sitecustomize patches a
# function of alexnet.training, in every process of the command (joblib's workers too), to send it first.
SITECUSTOMIZE = textwrap.dedent('''
    import os, signal, time
    from pathlib import Path
    where, times = os.environ["CTRL_C_AT"], int(os.environ.get("CTRL_C_TIMES", "1"))
    together = int(os.environ.get("CTRL_C_WHEN_PROCESSES_THERE", "1"))  # for a sweep: all its running jobs
    import alexnet.training as training
    original = getattr(training, where)
    def interrupted(*args, **kwargs):
        there = Path(os.environ["CTRL_C_DIR"])
        (there / str(os.getpid())).touch()
        if len(list(there.iterdir())) == together:
            for _ in range(times):
                os.killpg(0, signal.SIGINT)
                time.sleep(0.2)  # two signals at once would be one
        return original(*args, **kwargs)
    setattr(training, where, interrupted)
''')


def run_with_ctrl_c(tmp_path: Path, args: list[str], at: str, times: int = 1, processes: int = 1,
                    timeout: int = 240):
    hook = tmp_path / "hook"
    (hook / "entered").mkdir(parents=True, exist_ok=True)
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "CTRL_C_AT": at, "CTRL_C_TIMES": str(times), "CTRL_C_WHEN_PROCESSES_THERE": str(processes),
           "CTRL_C_DIR": str(hook / "entered"), "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("WANDB_MODE", None)
    # Its own process group with Ctrl-C's default action, as a command typed in a terminal has.
    return subprocess.run([sys.executable, "-m", "alexnet.run", *args], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=timeout, start_new_session=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


@pytest.mark.parametrize("at", ["load_dataset", "open_tracker"])  # decoding images; W&B starting (after the record)
def test_ctrl_c_before_the_first_step_is_one_line_and_leaves_no_run_dir(tmp_path, at):
    result = run_with_ctrl_c(tmp_path, [*TINY, "debug=smoke"], at=at)
    assert result.returncode == 130, result.stderr
    assert "error: interrupted (Ctrl-C) before training began: nothing was trained" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not list(tmp_path.glob("outputs/*/*")), list(tmp_path.glob("outputs/*/*"))


def test_a_second_ctrl_c_stops_at_once_and_says_where_the_last_checkpoint_is(tmp_path):
    result = run_with_ctrl_c(tmp_path, [*TINY, "debug=smoke"], at="train_one_epoch", times=2)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    run_dir, = tmp_path.glob("outputs/*/*")
    assert (run_dir / ".hydra" / "config.yaml").is_file()  # it had begun: its record stays
    # What it says matches the disk: the second Ctrl-C may come before the first one's checkpoint is written
    if (run_dir / "checkpoints" / "last.pt").is_file():
        assert "stopped at once by a second Ctrl-C, without a new checkpoint" in result.stderr
        assert "To resume from it, run the same command again" in result.stderr
    else:
        assert "stopped at once by a second Ctrl-C before the run's first checkpoint: there is nothing to resume" \
            in result.stderr
    assert not list(run_dir.glob("checkpoints/.*.tmp"))  # the writer is not killed mid-write


@pytest.mark.slow
def test_ctrl_c_in_a_joblib_sweep_checkpoints_every_running_job_and_the_sweep_resumes(tmp_path):
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, "debug=smoke",
            "trainer.limit_batches=1000", "trainer.checkpoint_every_n_steps=5000", "model.dropout=0.0,0.5,0.25"]
    stopped = run_with_ctrl_c(tmp_path, args, at="train_one_epoch", processes=2)  # both running jobs training
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    line = next(l for l in stopped.stderr.splitlines() if l.startswith("error: the sweep was stopped by Ctrl-C"))
    command = line.split("To resume it: ", 1)[1]
    sweep_dir = Path(tmp_path, command.rsplit("hydra.sweep.dir=", 1)[1])
    started = [j for j in sweep_dir.iterdir() if (j / "checkpoints" / "last.pt").is_file()]
    assert len(started) == 2  # both running jobs checkpointed before they stopped; the third never started
    assert not (sweep_dir / "2" / "checkpoints").exists()

    env = {**os.environ, "WANDB_SILENT": "true", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("WANDB_MODE", None)
    assert command.startswith("python -m alexnet.run -m ")
    resumed = subprocess.run([sys.executable, *command.split()[1:]], cwd=tmp_path, env=env, text=True,
                             capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]  # (without the hook: no Ctrl-C this time)
    for job in started:
        assert "resuming from" in (job / "run.log").read_text()
    assert all((sweep_dir / j / "test_results.json").is_file() for j in ("0", "1", "2"))


@pytest.mark.parametrize("setup,override,message", [
    (lambda d: (d / "afile").write_text(""), "hydra.run.dir=afile", "the run dir afile cannot be made: afile is a file"),
    (lambda d: (d / "afile").write_text(""), "hydra.run.dir=afile/run", "is a file. Fix: hydra.run.dir=PATH"),
    (lambda d: (d / "afile").write_text(""), "hydra.sweep.dir=afile", "the sweep dir afile cannot be made"),
    (lambda d: torch.save(torch.zeros(3), d / "t.pt"), "trainer.resume=t.pt",
     "t.pt is not a checkpoint written by alexnet.run (it holds a Tensor"),
])
def test_run_dirs_that_cannot_be_made_and_files_that_are_not_checkpoints(cli, setup, override, message):
    setup(cli.cwd)
    args = ["-m", "model.dropout=0.0,0.5"] if override.startswith("hydra.sweep") else []
    result = cli(*TINY, "debug=smoke", override, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert "Error executing job" not in result.stderr  # Hydra's own line: the contract is ours alone
    assert not list(cli.cwd.glob("outputs/*/*")) and not (cli.cwd / "multirun").exists()


def test_evaluate_names_a_file_that_is_not_a_checkpoint_and_leaves_no_dir(cli):
    torch.save(torch.zeros(3), cli.cwd / "x.pt")
    result = cli("ckpt=x.pt", "wandb.mode=disabled", module="evaluate")
    assert result.returncode == 2 and "(it holds a Tensor, not a model and its config)" in result.stderr
    assert "Fix: pass checkpoints/best.pt or checkpoints/last.pt" in result.stderr
    assert "Traceback" not in result.stderr and "Error executing job" not in result.stderr
    assert not list(cli.cwd.glob("outputs/**/*.log")) and not list(cli.cwd.glob("outputs/*/*/*"))


@pytest.mark.parametrize("load", [read_checkpoint, lambda path: load_resume_path(Path(path))])
def test_a_foreign_dict_is_not_called_an_old_checkpoint(tmp_path, load):
    torch.save({"a": 1}, tmp_path / "x.pt")
    with pytest.raises(NotACheckpoint, match=r"not a checkpoint written by alexnet.run \(it holds keys \['a'\]"):
        load(str(tmp_path / "x.pt"))


def test_a_refused_resume_leaves_the_run_dir_and_its_log_as_they_were(cli):
    # W&B off: its service finishes its own debug log after the run returns, which would race the snapshot
    alexnet.train([*TINY, "debug=smoke", "wandb.mode=disabled"], run_dir=cli.cwd / "run")  # only the refusal is the CLI's
    before = {p: p.read_bytes() for p in (cli.cwd / "run").rglob("*") if p.is_file() and p.name != ".lock"}
    refused = cli(*TINY, "debug=smoke", "wandb.mode=disabled", "hydra.run.dir=run", "optimizer.lr=0.5")
    assert refused.returncode == 2 and "cannot resume" in refused.stderr
    after = {p: p.read_bytes() for p in (cli.cwd / "run").rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # run.log too: the refused attempt's lines are taken back


def test_a_read_only_place_for_the_run_dir_is_refused_before_hydra_makes_it(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(RunDirRefused, match=f"the run dir {tmp_path}/run cannot be written: {tmp_path} is read-only"):
        rundir.check_can_make(tmp_path / "run")
    with pytest.raises(RunDirRefused, match="the sweep dir .* cannot be written"):
        rundir.check_can_make(tmp_path / "sweep", "hydra.sweep.dir")


def test_printing_hydras_config_resolved_makes_no_run_dir(cli):
    result = cli("--cfg", "hydra", "--resolve")
    assert result.returncode == 0, result.stderr
    assert "dir: outputs/" in result.stdout and not (cli.cwd / "outputs").exists()


# --- what a hostile pass by hand found (each was a traceback, a wrong message or a record that changed) --------
@pytest.mark.parametrize("argv,message", [
    (["model.dropout=0.1,0.2"], "model.dropout=0.1,0.2 is a sweep, but this is a single run. Fix: add -m"),
    (["hydra.mode=MULTIRUN", "model.dropout=0.0,abc"], "model.dropout=abc is not allowed: a number"),
    (["~model", "model.width=0.5"], "~model removes the model group, but model.width=0.5 sets a field of it"),
    (["model.dropout=${nonexistent.key}"], "model.dropout: Interpolation key 'nonexistent.key' not found. Fix:"),
    (["model.dropout=${model.dropout}"], "model.dropout: Recursive interpolation detected. Fix:"),
    (["hydra.run.dir=''"], "would write the record into the working directory itself"),
    (["ckpt=a=b/best.pt"], "quote a value that holds `=`"),
    # interval() under the basic sweeper was Hydra's bare "does not support sweep type : INTERVAL_SWEEP"
    (["-m", "model.dropout=interval(0,0.5)"], "is a range to search, which the default (basic) sweeper cannot "
                                              "sweep. Fix: add hydra/sweeper=optuna hydra.sweeper.n_trials=N"),
    (["model.dropout=interval(0,0.5)"], "is a range to search, but this is a single run. Fix: add -m "
                                        "hydra/sweeper=optuna"),
    # budget=cpu's seeds under Optuna would be searched as a hyperparameter (a review found it)
    (["-m", "+experiment=search", "budget=cpu"], "budget=cpu sweeps seeds, which a sampling sweeper (Optuna) would"),
    # Hydra's "Sweeping over Hydra's configuration is not supported", with no fix (a study was started so)
    (["-m", "+experiment=input_size", "hydra.sweeper.params.input_size=s32,s64"],
     "sweeps a setting of Hydra's, which Hydra cannot do. Fix: sweep the key itself, input_size=s32,s64"),
    (["-m", "+hydra.sweeper.params.model.dropout=0.1,0.2"], "Fix: sweep the key itself, model.dropout=0.1,0.2"),
    (["-m", "hydra/launcher=basic,joblib"], "Fix: give hydra/launcher one value."),
    (["-m", "hydra.job.chdir=true,false"], "Fix: give hydra.job.chdir one value (quote a value that holds commas"),
])
def test_hostile_overrides_get_one_line_naming_the_fix(argv, message):
    from alexnet.errors import UserError
    from alexnet.overrides import check

    with pytest.raises(UserError) as refused:
        check(["data=synthetic", *argv])
    assert message in str(refused.value) and len(str(refused.value).splitlines()) == 1, str(refused.value)


def test_a_range_passes_the_checks_under_the_optuna_sweeper(tmp_path):
    from alexnet.overrides import check

    jobs = check(["-m", "data=synthetic", "model.dropout=interval(0,0.5)", "hydra/sweeper=optuna",
                  f"hydra.sweep.dir={tmp_path}/sweep"])
    assert jobs and not (tmp_path / "sweep").exists()


def test_a_quoted_checkpoint_path_is_read_as_hydra_reads_it():
    from alexnet.evaluate import checkpoint_argument

    assert checkpoint_argument(["ckpt='runs/x=y/best.pt'", "data.root=d"]) == "runs/x=y/best.pt"
    assert checkpoint_argument(["ckpt=runs/best.pt"]) == "runs/best.pt"
    assert checkpoint_argument(["data.root=d"]) is None


def test_summary_and_bench_name_their_own_mistakes():
    from hydra.errors import MissingConfigException

    from alexnet.config import compose
    from alexnet.errors import ConfigError, message_of
    from alexnet.summary import main as summary

    with pytest.raises(ConfigError, match="alexnet.summary takes overrides only .* not -m"):
        summary(["-m", "model.dropout=0.1,0.2"])
    with pytest.raises(MissingConfigException) as missing:  # what alexnet.bench --model=resnet composes
        compose(["model=resnet"])
    assert message_of(missing.value) == ("model=resnet is not an option of `model`, which has: alexnet, "
                                         "alexnet_cifar. Fix: model=<one of them>.")


def test_the_checkpoint_writer_is_not_a_daemon_so_exit_waits_for_its_write(tmp_path):
    from alexnet.checkpoint import CheckpointWriter

    writer = CheckpointWriter()
    writer.save(tmp_path / "last.pt", {"model": {"w": torch.zeros(3)}, "config": {}})
    assert writer._thread is not None and not writer._thread.daemon  # a daemon is killed mid-write: SIGABRT
    writer.wait()


IMPORT_HOOK = textwrap.dedent('''
    import os, signal, sys
    class CtrlCOnImport:
        def find_spec(self, name, path=None, target=None):
            if name == os.environ["CTRL_C_ON_IMPORT"]:
                sys.meta_path.remove(self)
                os.kill(os.getpid(), signal.SIGINT)
            return None
    sys.meta_path.insert(0, CtrlCOnImport())
''')


@pytest.mark.parametrize("module,args,heavy", [("run", ["data=synthetic"], "hydra"), ("evaluate", ["ckpt=x.pt"], "torch"),
                                               ("report", ["."], "hydra"), ("summary", [], "torch")])
def test_ctrl_c_during_the_heavy_imports_is_one_line(tmp_path, module, args, heavy):
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(IMPORT_HOOK)
    env = {**os.environ, "CTRL_C_ON_IMPORT": heavy,
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", f"alexnet.{module}", *args], cwd=tmp_path, env=env, text=True,
                            capture_output=True, timeout=120,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert result.returncode == 130, result.stderr[-2000:]
    assert result.stderr.strip() == "error: interrupted (Ctrl-C) while starting: nothing was done"


# --- --validate: every check of a run, without training -------------------------------------------------------
def test_validate_runs_every_check_without_training(tmp_path, monkeypatch):
    from alexnet.errors import UserError
    from alexnet.validate import validate
    from test_data import make_imagefolder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("alexnet.training.free_bytes", lambda device: 16 * 2**30)  # the same answer on any machine
    make_imagefolder(tmp_path / "ds")
    lines = validate(["-m", "data=imagefolder", "data.root=ds", "data.val_size=3", "model=alexnet_cifar",
                      "model.dropout=0.0,0.5"])
    assert len(lines) == 2 and all(line.startswith("valid: ") for line in lines)
    assert "imagefolder ds: 3 classes" in lines[0] and "(not decoded)" in lines[0]
    study = validate(["-m", "+experiment=dropout", "data=synthetic"])  # its sweep lives in the experiment's file
    assert {line.split()[3] for line in study} == {f"model.dropout={d}" for d in (0.0, 0.25, 0.5, 0.75)}
    for argv, message in [(["data=imagefolder", "data.root=nowhere"], "data.root=nowhere does not exist"),
                          (["data=imagefolder", "data.root=ds"], "data.val_size=5000 leaves no training images"),
                          (["data.download=false", "data.root=empty"], "CIFAR-10 is not in data.root=empty"),
                          (["model.width=16"], "this run needs about 188.3 GiB"),
                          (["model.dropout=2"], "model.dropout=2.0 is not allowed")]:
        with pytest.raises(UserError, match=message):
            validate(argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # nothing made: no run dir, no cache


def test_validate_through_the_cli_exits_0_or_2(cli):
    good = cli("--validate", "data=synthetic")
    assert good.returncode == 0 and good.stdout.startswith("valid: data=synthetic"), good.stderr
    bad = cli("--validate", "data=imagefolder", "data.root=nowhere")
    assert bad.returncode == 2 and bad.stderr.startswith("error: data.root=nowhere does not exist")
    assert not (cli.cwd / "outputs").exists()


def test_help_lists_what_a_user_chooses_and_nothing_internal(cli):
    result = cli("--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in ("model=", "  alexnet_cifar", "data=", "  synthetic", "optimizer=", "+experiment=", "  dropout",
                 "debug=", "Examples:", "--validate"):
        assert line in out, line
    assert "schema/" not in out and "input_size=" not in out and "s224" not in out  # internal groups
    assert "lrn             does Local Response Normalization (Krizhevsky et al. 2012) still help" in out
    assert len(out.splitlines()) < 50


def test_a_user_config_file_that_is_not_yaml_is_one_line(tmp_path, monkeypatch):
    from alexnet.errors import UserError
    from alexnet.overrides import check

    (tmp_path / "mine" / "model").mkdir(parents=True)
    (tmp_path / "mine" / "model" / "broken.yaml").write_text("defaults: [/schema/model@_here_: default]\nwidth: [oops\n")
    (tmp_path / "mine" / "model" / "extra.yaml").write_text("defaults: [/schema/model@_here_: default]\nbogus_key: 3\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"a config file is not valid YAML: .* in .*broken.yaml, line 3. Fix that"):
        check(["hydra.searchpath=[file://mine]", "model=broken"])
    with pytest.raises(UserError, match="Key 'bogus_key' not in 'ModelConfig'"):  # the key, not a cut-off line
        check(["hydra.searchpath=[file://mine]", "model=extra"])


def test_a_joblib_sweep_resumes_with_the_command_it_printed(tmp_path):
    """The launcher is how a sweep runs, not what it trains: the resume command it prints must be accepted."""
    import yaml

    from alexnet.overrides import check_same_sweep

    (tmp_path / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": ["model.dropout=0.0,0.5"]}}}))
    check_same_sweep(tmp_path, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model.dropout=0.0,0.5"])
    with pytest.raises(RunDirRefused, match="only now: model.dropout=0.0,0.25"):
        check_same_sweep(tmp_path, ["hydra/launcher=joblib", "model.dropout=0.0,0.25"])
