"""W&B mode resolution, and a W&B that cannot start never stops a run."""
from __future__ import annotations

import json

import pytest

from alexnet.tracking import Tracker, resolve_mode
from conftest import TINY
from wandb_records import offline_runs, read_run


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # an empty netrc: no stored login


def test_auto_is_offline_without_a_key(no_credentials):
    assert resolve_mode("auto") == "offline"


def test_auto_is_online_with_a_key(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"


def test_auto_is_online_with_a_netrc_login(no_credentials, tmp_path):
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    assert resolve_mode("auto") == "online"


def test_auto_respects_wandb_mode_and_explicit_modes_win(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"
    assert resolve_mode("offline") == "offline"


def test_disabled_still_writes_metrics_jsonl(tmp_path):
    tracker = Tracker(tmp_path, {"a": 1}, "disabled", "p")
    tracker.log({"train/loss": 1.5, "nan": float("nan")}, step=3)
    tracker.summary({"test/acc": 0.5})
    tracker.finish()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["_step"] == 3 and lines[0]["train/loss"] == 1.5 and lines[0]["nan"] == "nan"
    assert lines[1] == {"_summary": {"test/acc": 0.5}}
    assert not (tmp_path / "wandb").exists()


def test_online_without_a_key_trains_and_keeps_an_offline_run(cli, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    overrides = [o for o in TINY if not o.startswith("wandb.")]
    result = cli(*overrides, "debug=smoke", "wandb.mode=online", HOME=str(home), WANDB_API_KEY="",
                 NETRC=str(home / "netrc"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "W&B could not start an online run" in result.stderr and "the run is kept offline" in result.stderr
    assert "Upload it later with: wandb sync" in result.stderr  # the warning's own fix
    (run_dir,) = {p.parent for p in cli.cwd.glob("outputs/*/*/metrics.jsonl")}
    (path,) = offline_runs(run_dir)
    run = read_run(path)
    assert run.exit_code == 0 and "test/acc" in run.summary and any("train/loss" in h for h in run.history)


def test_unreachable_server_keeps_the_run_offline_within_bounded_time(cli, tmp_path):
    import socket
    import time

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = [o for o in TINY if not o.startswith("wandb.")]
    start = time.monotonic()
    result = cli(*overrides, "debug=smoke", "wandb.mode=online", "wandb.init_timeout=5", timeout=240,
                 WANDB_BASE_URL=f"http://127.0.0.1:{port}", WANDB_API_KEY="x" * 40, HOME=str(tmp_path))
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr[-2000:]
    assert elapsed < 120, f"took {elapsed:.0f}s"
    warnings = [line for line in result.stderr.splitlines() if "warning:" in line]  # the console's marker, on stderr
    assert len(warnings) == 1 and "could not start an online run" in warnings[0] and "wandb sync" in warnings[0]
    (run_dir,) = {p.parent for p in cli.cwd.glob("outputs/*/*/metrics.jsonl")}
    (path,) = offline_runs(run_dir)
    run = read_run(path)
    assert run.exit_code == 0 and "test/acc" in run.summary and any("train/loss" in h for h in run.history)
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1]) == {"_exit": 0}


def test_a_process_that_cannot_start_wandb_keeps_the_run_id_for_the_next(tmp_path, monkeypatch):
    """If W&B cannot start in a resumed process, its checkpoints keep the W&B run id, so the next process
    continues the same W&B run rather than starting a second one (before: the id was lost, the run split)."""
    from alexnet.tracking import Tracker

    monkeypatch.setattr(Tracker, "_start", staticmethod(lambda mode, init, timeout: (
        None, "ServerResponseError: run ID abc is in use")))
    broken = Tracker(tmp_path, {}, "offline", "p", resume_id="abc")
    assert broken.run is None and broken.mode == "disabled" and broken.run_id == "abc"


def test_a_cli_run_does_not_share_its_parents_wandb_service(cli):
    """A parent that ran W&B in-process advertises its service in WANDB_SERVICE; a CLI run uses its own (with
    the parent's, a SIGKILL left the run's stream 'in use' there, and its resume lost W&B). A token of a service
    that is gone shows it: inherited, W&B could not start at all."""
    result = cli(*TINY, "debug=smoke", "data.train_size=300", "data.val_size=50", "data.test_size=50",
                 WANDB_SERVICE="3-1-tcp-localhost-1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "W&B could not start" not in result.stdout + result.stderr
    (run_dir,) = {p.parent for p in cli.cwd.glob("outputs/*/*/metrics.jsonl")}
    assert len(offline_runs(run_dir)) == 1
