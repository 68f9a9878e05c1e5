"""scripts/gpu_acceptance.sh and scripts/download_wheels.sh: kept working on a machine without a GPU.

The smoke run goes through every step on the CPU at toy size; the other tests attack the time boxes, the
signals and the bad inputs. The wheel download needs a package index and takes a minute: `slow`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import MPL_CACHE, REPO

SCRIPT = REPO / "scripts" / "gpu_acceptance.sh"
STEPS = ["gpu_tests", "bench", "time_to_accuracy", "ddp", "studies"]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


acceptance = load_script("gpu_acceptance")
requirements = load_script("requirements")


def start(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHON": sys.executable, "MPLCONFIGDIR": MPL_CACHE}
    return subprocess.Popen(["bash", str(SCRIPT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def acceptance_cli(*args: str, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    proc = start(*args, **kwargs)
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.slow  # 50 s: run it (pytest -m slow) before a GPU session; its time boxes and errors stay default
def test_smoke_runs_every_step_and_records_every_figure_with_its_command(tmp_path):
    # One test, not three sharing a module fixture: pytest-xdist would run such a fixture once per worker.
    out = tmp_path / "out"
    result = acceptance_cli("--smoke", "--out", str(out), "--budget", "240")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.startswith("environment:")  # the environment is printed first
    summary = json.loads((out / "summary.json").read_text())
    check_environment_and_steps(summary, out)
    check_figures(summary, out)
    check_markdown((out / "summary.md").read_text())


def check_environment_and_steps(summary: dict, out: Path) -> None:
    env = summary["environment"]
    for key in ("python", "torch", "cuda_runtime", "device", "bf16", "driver", "commit", "hydra-core", "wandb"):
        assert key in env, key
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert env["commit"].split()[0] == head.strip()
    assert list(summary["steps"]) == STEPS
    for name, step in summary["steps"].items():
        assert step["status"] == "passed", (name, step)
        assert (out / step["log"]).is_file() and step["seconds"] > 0
    assert summary["smoke"] is True and summary["wall_s"] <= summary["budget_s"]


def check_figures(summary: dict, out: Path) -> None:
    figures = summary["figures"]
    for bench in ("alexnet_224", "alexnet_cifar_32"):
        for key in ("train.seed.images_per_s", "train.bare.images_per_s", "train.ours.images_per_s",
                    "train.ours.fraction_of_peak", "train.ours_over_seed", "train.ours_over_bare",
                    "data.ours_over_seed", "peak_tflops.fp32", "flops_per_image", "train.ours.ceiling_images_per_s",
                    "checkpoint.write_s", "checkpoint.to_host_s", "checkpoint.bytes"):
            assert f"bench.{bench}.{key}" in figures, (bench, key)
        assert "--model alexnet" in figures[f"bench.{bench}.train.ours.images_per_s"]["command"]
        shares = [figures[f"bench.{bench}.profile.{p}_share"]["value"] for p in ("data", "forward", "backward",
                                                                                 "optimizer")]
        assert all(s > 0 for s in shares) and sum(shares) == pytest.approx(1.0)
    for key in ("tta.test_acc", "tta.train_seconds", "ddp.seconds", "gpu_tests.skipped", "gpu_tests.interrupted",
                "studies.lrn.model.lrn=true.test_acc", "studies.lrn.model.lrn=false.test_acc"):
        assert key in figures, key
    assert figures["tta.epochs_done"]["value"] == 2 and "+experiment=fast_cifar" in figures["tta.test_acc"]["command"]
    assert "torch.distributed.run" in figures["ddp.seconds"]["command"]
    assert all(("alexnet" in f["command"] or "pytest" in f["command"]) for f in figures.values())
    assert [t["key"] for t in summary["targets"]] == [t[0] for t in acceptance.TARGETS]
    assert len(summary["curves"]["time_to_accuracy"]) == 2
    assert (out / "studies" / "lrn" / "report.md").is_file()


def check_markdown(text: str) -> None:
    assert "--smoke: CPU, toy sizes; not a measurement" in text
    assert "| alexnet at 224, batch 512: training images/s | >= 40,000 |" in text
    assert "**missed**" in text  # a CPU at toy size meets no speed target, and says so
    for name in STEPS:
        assert f"| {name} | passed |" in text
    assert "where one step of `ours` spends its time" in text and "Hardware bound:" in text
    assert "aten::" in text  # the profiler's operator table
    assert "## fast_cifar: val/acc against seconds of training" in text
    assert "Hardware bound: 2 epochs x 96 images at the bench's ceiling" in text  # limit_batches 3 x batch 32


def test_only_the_test_that_sigint_ended_first_counts_as_interrupted(tmp_path):
    """SIGINT at t=100. A test that failed before it stays failed: here one that failed in its call and was
    stopped in its teardown, and one that exited 130 before the signal (something else's SIGINT)."""
    failures = tmp_path / "failures.log"
    entry = "===== tests/t.py::{} ({})\nat: {}\ncrash: {}\nE   {}\n\n".format
    failures.write_text(entry("test_a", "call", 90.0, "AssertionError: no", "AssertionError: no")
                        + entry("test_a", "teardown", 101.0, "SystemExit: 130", "SystemExit: 130")
                        + entry("test_b", "call", 95.0, "SystemExit: 130", "SystemExit: 130")
                        + entry("test_c[x y]", "call", 101.5, "SystemExit: 130", "SystemExit: 130"))
    assert acceptance.interrupted_tests(failures, sigint_at=100.0) == {"test_c[x y]"}
    assert acceptance.interrupted_tests(failures, sigint_at=200.0) == set()


def test_a_killed_pytest_is_still_counted_and_its_failures_keep_their_tracebacks(tmp_path):
    """The GPU step's pytest can die before its JUnit report: the -v log gives the same counts, and the conftest
    hook has written each failure's traceback as it happened (both as the acceptance runner sets them up). A
    teardown error counts its test as failed, once, in both; a test ended by SIGINT is found in the tracebacks."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mixed.py").write_text(
        "import pytest\n"
        "@pytest.fixture\n"
        "def bad_teardown():\n"
        "    yield\n"
        "    raise RuntimeError('teardown broke')\n"
        "def test_fine(): pass\n"
        "@pytest.mark.parametrize('x', [1, 2])\n"
        "def test_broken(x): assert x == 1, 'two is not one'\n"
        "@pytest.mark.parametrize('s', ['a b'])\n"
        "def test_passes_then_teardown_fails(bad_teardown, s): pass\n"
        "def test_fails_then_teardown_fails(bad_teardown): assert False\n"
        "@pytest.mark.parametrize('s', ['a b'])\n"
        "def test_stopped_by_ctrl_c(s): raise SystemExit(130)\n"  # an in-process run's answer to SIGINT
        "def test_mentions_ctrl_c(): assert 0, 'stderr:\\nSystemExit: 130\\nKeyboardInterrupt'\n"
        "@pytest.mark.skip(reason='not here')\n"
        "def test_skipped(): pass\n")
    failures, junit = tmp_path / "failures.log", tmp_path / "junit.xml"
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "ALEXNET_TEST_FAILURES": str(failures)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-o", "addopts=", "-v", "--color=no", "-p", "conftest",
                             "-p", "no:cacheprovider", f"--junitxml={junit}", "tests"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout[-2000:]
    expected = {"passed": 2, "failed": 5, "skipped": 1, "failed_tests": [
        "test_broken[2]", "test_passes_then_teardown_fails[a b]", "test_fails_then_teardown_fails",
        "test_stopped_by_ctrl_c[a b]", "test_mentions_ctrl_c"]}
    assert acceptance.log_counts("$ pytest -v\n" + result.stdout) == expected
    assert acceptance.count_tests(junit, tmp_path / "unused.log") == (expected, acceptance.JUNIT)
    junit.write_text(junit.read_text()[:200])  # cut short by a kill: the log counts
    log = tmp_path / "pytest.log"
    log.write_text(result.stdout)
    assert acceptance.count_tests(junit, log) == (expected, acceptance.FROM_LOG)
    written = failures.read_text()
    assert "===== tests/test_mixed.py::test_broken[2] (call)" in written and "two is not one" in written
    assert "test_passes_then_teardown_fails[a b] (teardown)" in written and "teardown broke" in written
    assert "test_fine" not in written and "test_broken[1]" not in written
    # the deadline's SIGINT, not the test: told apart from the real failures
    assert acceptance.interrupted_tests(failures, 0.0) == {"test_stopped_by_ctrl_c[a b]"}  # not one that says so
    assert acceptance.interrupted_tests(failures, time.time() + 60) == set()  # no SIGINT came before them
    assert acceptance.interrupted_tests(tmp_path / "none.log", 0.0) == set()


def test_a_tiny_budget_times_steps_out_and_still_ends_in_time(tmp_path):
    started = time.monotonic()
    # from another folder, with a relative --out: it lands where the command was typed
    result = acceptance_cli("--smoke", "--out", "out", "--budget", "12", cwd=tmp_path)
    wall = time.monotonic() - started
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())  # in the folder it ran from
    statuses = [summary["steps"][name]["status"] for name in STEPS]
    assert result.returncode == 1, result.stdout
    assert "timeout" in statuses and set(statuses) <= {"passed", "timeout", "skipped"}, statuses
    assert list(summary["steps"]) == STEPS  # a timed-out step does not stop the ones after it
    assert wall < 12 + 6, wall  # the budget, plus Python's start and the last summary


def test_download_wheels_refuses_a_used_folder_before_fetching_anything(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    result = subprocess.run(["bash", str(REPO / "scripts" / "download_wheels.sh"), str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "not an empty folder" in result.stderr
    assert (tmp_path / "mine.txt").read_text() == "keep me" and len(list(tmp_path.iterdir())) == 1


def test_a_step_past_its_deadline_is_killed_with_its_children(tmp_path):
    acc = acceptance.Acceptance(tmp_path, budget=60, smoke=True, command="test", start=time.monotonic())
    (tmp_path / "work").mkdir()
    pid_file = tmp_path / "child.pid"
    # a parent that ignores SIGINT, with a child in a session of its own (as torchrun starts its workers) that
    # ignores it too: both must be gone when run() returns
    stubborn = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"
    code = (f"import signal, subprocess, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            f"child = subprocess.Popen([sys.executable, '-c', {stubborn!r}], start_new_session=True); "
            f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)")
    started = time.monotonic()
    assert acceptance.run(acc, [sys.executable, "-c", code], tmp_path / "log", time.monotonic() + 4) is None
    assert time.monotonic() - started < 5
    child = Path(f"/proc/{pid_file.read_text()}/stat")
    time.sleep(0.2)
    assert not child.exists() or child.read_text().split(")")[1].split()[0] == "Z"  # gone, or dead and unreaped
    assert "stopped at its deadline" in (tmp_path / "log").read_text()


def test_ctrl_c_stops_the_step_and_keeps_the_summary_so_far(tmp_path):
    out = tmp_path / "out"
    # as from a terminal: the script keeps SIGINT ignored where it was started so (a suite run with `&` or nohup)
    proc = start("--smoke", "--out", str(out), "--budget", "240",
                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "logs" / "gpu_tests.log").is_file():
        time.sleep(0.1)
    time.sleep(0.5)  # pytest is starting up
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and "stopped by SIGINT" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == {"gpu_tests": {"status": "interrupted", "reason": "the script was stopped",
                                              "log": "logs/gpu_tests.log", "seconds": pytest.approx(0.5, abs=2)}}
    junit = str(out / "work" / "gpu-tests.xml")
    ps = subprocess.run(["pgrep", "-f", junit], capture_output=True, text=True)
    assert ps.stdout == ""  # the step's pytest was stopped with the script


@pytest.mark.parametrize("args,message", [
    (["--out", "{tmp}/out"], "no CUDA device is visible to torch here"),
    (["--out", "{tmp}/full", "--smoke"], "exists and is not an empty folder"),
    (["--out", "{tmp}/out", "--smoke", "--data", "{tmp}/nowhere"], "--data {tmp}/nowhere: no such file or folder"),
    (["--out", "{tmp}/out", "--smoke", "--data", "{tmp}/full"], "no train/ and test/ folders"),
    (["--out", "{tmp}/out", "--smoke", "--data", "{tmp}/full/file.txt"], "is a file but not a tarball"),
    (["--out", "{tmp}/out", "--smoke", "--data", "{tmp}/escape.tar"], "cannot unpack it (OutsideDestinationError"),
    (["--out", "{tmp}/out", "--smoke", "--wheels", "{tmp}"], "no requirements.txt there"),
    (["--out", "{tmp}/out", "--budget", "5"], "--budget 5.0 is outside 10 to 86400 seconds"),
    (["--out", "{tmp}/out", "--smok"], "unrecognized arguments: --smok"),
])
def test_bad_inputs_exit_2_with_the_fix_and_leave_out_as_it_was(tmp_path, args, message):
    if "no CUDA" in message and acceptance_cuda():
        pytest.skip("this machine has CUDA")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file.txt").write_text("x")
    with tarfile.open(tmp_path / "escape.tar", "w") as tar:  # a member that would land outside the folder
        tar.add(tmp_path / "full" / "file.txt", arcname="../../escaped.txt")
    result = acceptance_cli(*[a.format(tmp=tmp_path) for a in args], timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and "Fix: " in result.stderr, result.stderr
    assert message.format(tmp=tmp_path) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # the corrected command can use the same --out
    assert not (tmp_path.parent / "escaped.txt").exists()


def acceptance_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_requirements_leave_out_torch_and_what_it_brings(tmp_path):
    needed = requirements.project_requirements(REPO / "setup.cfg")
    names = {requirements.normalize(r.split(">")[0].split("<")[0].split("=")[0]) for r in needed}
    assert {"hydra-core", "omegaconf", "wandb", "pytest"} <= names and not names & {"torch", "torchvision"}
    closure = requirements.torch_closure("3.12")
    assert {"torch", "torchvision", "numpy", "pillow"} <= closure and "wandb" not in closure
    freeze = tmp_path / "freeze.txt"
    freeze.write_text("# the image\nMarkupSafe==3.0.2\nrich @ file:///x\ntyping_extensions>=4\n-e git+https://x\n")
    assert requirements.names(freeze) == ["markupsafe", "rich", "typing-extensions"]
    for wheel in ("rich-15.0.0-py3-none-any.whl", "wandb-0.31.0-py3-none-manylinux_2_28_x86_64.whl"):
        (tmp_path / wheel).write_text("")
    names_file = tmp_path / "names.txt"
    names_file.write_text("rich\nnumpy\n")
    requirements.drop(names_file, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.whl")) == ["wandb-0.31.0-py3-none-manylinux_2_28_x86_64.whl"]


@pytest.mark.slow
def test_download_wheels_fills_a_small_folder_for_python_3_12(tmp_path):
    result = subprocess.run(["bash", str(REPO / "scripts" / "download_wheels.sh"), str(tmp_path / "wheels"),
                             "--python-version", "3.12"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    wheels = {p.name.split("-")[0].lower() for p in (tmp_path / "wheels").glob("*.whl")}
    assert {"hydra_core", "omegaconf", "wandb", "antlr4_python3_runtime"} <= wheels
    assert not wheels & {"torch", "torchvision", "numpy", "pillow", "triton"}
    assert sum(p.stat().st_size for p in (tmp_path / "wheels").iterdir()) < 150 * 2**20
    assert (tmp_path / "wheels" / "requirements.txt").is_file()


def test_wheels_install_offline_and_a_failed_install_is_a_clear_error(tmp_path):
    acc = acceptance.Acceptance(tmp_path / "out", budget=120, smoke=True, command="test", start=time.monotonic())
    (acc.out / "logs").mkdir(parents=True)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "requirements.txt").write_text("rich\n")  # installed already: nothing to fetch
    acceptance.install_wheels(acc, wheels)
    assert acc.steps["install_wheels"]["status"] == "passed" and acc.site_packages is None
    (wheels / "requirements.txt").write_text("no-such-package-anywhere\n")
    with pytest.raises(acceptance.UsageError, match="installing from --wheels .* failed"):
        acceptance.install_wheels(acc, wheels)
    assert acc.steps["install_wheels"]["status"] == "failed"
    assert "--no-index" in (acc.out / "logs" / "wheels.log").read_text()


def test_a_data_tarball_is_unpacked_inside_the_first_real_data_step(tmp_path):
    tree = tmp_path / "tree" / "cifar"
    for split in ("train", "test"):
        (tree / split / "cat").mkdir(parents=True)
        (tree / split / "cat" / "0.jpg").write_bytes(b"x")
    with tarfile.open(tmp_path / "data.tar.gz", "w:gz") as tar:
        tar.add(tree, arcname="cifar")  # one top folder, as some tarballs have
    acceptance.check_tarball(tmp_path / "data.tar.gz")
    acc = acceptance.Acceptance(tmp_path / "out", budget=60, smoke=False, command="test", start=time.monotonic())
    (acc.out / "logs").mkdir(parents=True)
    data = acceptance.Data(tmp_path / "data.tar.gz")
    root, problem = acceptance.real_data(acc, data, acc.out / "logs" / "x.log", time.monotonic() + 30)
    assert problem is None and root == (acc.work / "data" / "cifar").resolve() and (root / "test" / "cat").is_dir()
    assert acceptance.real_data(acc, None, acc.out / "logs" / "x.log", time.monotonic() + 30)[1].startswith("no --data")
