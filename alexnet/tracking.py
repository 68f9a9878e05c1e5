"""Run tracking, from one place: every value goes to the run dir's metrics.jsonl and, when it can, to W&B.

metrics.jsonl is the local record, one JSON object per line: `{"_step": N, key: value, ...}` for history,
`{"_summary": {...}}` for final values and `{"_exit": code}` last. It is written whatever happens to W&B;
a W&B failure is reported once as a warning and never stops or loses a run.
"""
from __future__ import annotations

import json
import logging
import math
import netrc
import os
import time
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)


def api_key_configured() -> bool:
    """True when W&B would find an API key: WANDB_API_KEY, or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    """`auto` -> WANDB_MODE if set, else online with an API key and offline without one."""
    if mode != "auto":
        return mode
    return os.environ.get("WANDB_MODE") or ("online" if api_key_configured() else "offline")


def spread_indices(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them when k >= n)."""
    if k >= n:
        return list(range(n))
    return [round(i * (n - 1) / max(1, k - 1)) for i in range(k)]


def _jsonable(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


class Tracker:
    def __init__(self, run_dir: Path, config: dict, mode: str, project: str, entity: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, name: str | None = None,
                 job_type: str = "train", init_timeout: float = 60.0, resume_id: str | None = None,
                 keep_lines: int | None = None, runtime: float = 0.0):
        """`resume_id` continues that W&B run; `keep_lines` first cuts metrics.jsonl back to its first lines
        (those written before the checkpoint a run resumes from), so no step appears twice; `runtime` is the
        wall-clock time the run had spent up to that checkpoint, so `_runtime` counts every process's share."""
        self.run_dir = Path(run_dir)
        path = self.run_dir / "metrics.jsonl"
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        if keep_lines is not None and len(lines) > keep_lines:
            lines = lines[:keep_lines]
            path.write_text("".join(lines))
        self.lines = len(lines)  # lines in metrics.jsonl: a checkpoint records it
        self.metrics = open(path, "a")
        self.start = time.time() - runtime
        self.run = None
        self.resume_id = resume_id  # kept when W&B cannot start: the next process continues that W&B run
        self.mode = resolve_mode(mode)
        if self.mode == "disabled":
            return
        init = dict(project=project, entity=entity, group=group, tags=list(tags or []), name=name,
                    job_type=job_type, config=config, dir=str(self.run_dir))
        if resume_id:
            init.update(id=resume_id, resume="allow")
        self.run, error = self._start(self.mode, init, init_timeout)
        if self.run is None and self.mode == "online":  # keep it as an offline run that can be synced later
            self.mode = "offline"
            self.run, offline_error = self._start(self.mode, init, init_timeout)
            error = error if self.run is not None else f"{error}; offline: {offline_error}"
        if self.run is None:
            self.mode = "disabled"
            log.warning("W&B could not start a run (%s); training goes on and every value is still written to %s",
                        error, self.run_dir / "metrics.jsonl")
            return
        if self.mode == "offline":
            if error:
                log.warning("W&B could not start an online run (%s); the run is kept offline. Upload it later "
                            "with: %s", error, self.sync_command())
            else:
                log.info("W&B run stored offline; upload it later with: %s", self.sync_command())
        elif self.mode == "online":  # W&B's own banner is silenced: its link is ours to give
            log.info("W&B run: %s", getattr(self.run, "url", None) or "(no link)")
        if job_type == "train":
            self._wandb("define_metric", self._define_metrics)

    @staticmethod
    def _start(mode: str, init: dict, init_timeout: float):
        """(run, None), or (None, what went wrong): no server, a refused key, a broken install."""
        try:
            import wandb

            # W&B's own console lines (its banner, a summary of what our lines already said) only when asked:
            # WANDB_SILENT=false brings them back.
            silent = os.environ.get("WANDB_SILENT", "true").lower() not in ("false", "0")
            settings = wandb.Settings(init_timeout=init_timeout, silent=silent)
            return wandb.init(mode=mode, settings=settings, **init), None
        except Exception as e:
            return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"

    @staticmethod
    def _define_metrics(run) -> None:
        """Epoch-level charts use the epoch as x-axis; the summary keeps the best val/acc, not the last."""
        run.define_metric("epoch")
        for key in ("val/*", "train/acc", "train/loss_epoch", "train/objective_epoch", "train/images_per_sec", "train/time", "train/elapsed",
                    "epoch_time"):
            run.define_metric(key, step_metric="epoch")
        run.define_metric("val/acc", step_metric="epoch", summary="max")

    def offline_dirs(self) -> list[Path]:
        """Every offline dir of this W&B run, oldest first: a resumed offline run adds one per process."""
        if self.run is None:
            return []
        here = Path(self.run.dir).parent
        return sorted(p for p in here.parent.glob(f"offline-run-*-{self.run.id}") if p.is_dir()) or [here]

    def sync_command(self) -> str:
        return "wandb sync " + " ".join(str(p) for p in self.offline_dirs())

    def runtime(self) -> float:
        """Wall-clock seconds of the run so far, over all its processes (up to each one's last checkpoint)."""
        return round(time.time() - self.start, 3)

    def _wandb(self, what: str, call) -> None:
        if self.run is None:
            return
        try:
            call(self.run)
        except Exception as e:
            log.warning("W&B %s failed (%s: %s); W&B logging stops for this run, metrics.jsonl goes on",
                        what, type(e).__name__, e)
            self.run = None

    def _write(self, record: dict) -> None:
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        self.lines += 1

    def log(self, metrics: dict, step: int) -> None:
        metrics = {k: _jsonable(v) for k, v in metrics.items()}
        self._write({"_step": step, "_runtime": self.runtime(), **metrics})
        self._wandb("log", lambda run: run.log(metrics, step=step))

    def summary(self, metrics: dict) -> None:
        metrics = {k: _jsonable(v) for k, v in metrics.items()}
        self._write({"_summary": metrics})
        self._wandb("summary", lambda run: run.summary.update(metrics))

    def watch(self, model, log_freq: int) -> None:
        """Gradient and parameter histograms every `log_freq` steps (costly: off by default)."""
        self._wandb("watch", lambda run: run.watch(model, log="all", log_freq=log_freq))

    def log_test_results(self, results: dict, classes: list[str], images, step: int, num_samples: int) -> None:
        """Confusion matrix, per-class accuracy and sample predictions: to test_results.json and to W&B.

        `images` are the test split's uint8 images (N x 3 x H x W), in the order of `results`.
        """
        from alexnet.engine import confusion_matrix, per_class_accuracy

        predictions, targets, confidences = results["predictions"], results["targets"], results["confidences"]
        confusion = confusion_matrix(predictions, targets, len(classes))
        # a class without test images has no accuracy: it is left out, not reported as 0
        per_class = {c: a for c, a in zip(classes, per_class_accuracy(confusion)) if a is not None}
        record = {"classes": classes, "confusion_matrix": confusion.tolist(), "per_class_acc": per_class,
                  "images": len(targets), "acc": results["acc"], "loss": results["loss"]}
        (self.run_dir / "test_results.json").write_text(json.dumps(record, indent=1))
        self._wandb("test results", lambda run: run.log(
            self._wandb_test_results(predictions, targets, confidences, classes, per_class, images, num_samples),
            step=step))

    @staticmethod
    def _wandb_test_results(predictions, targets, confidences, classes, per_class, images, num_samples) -> dict:
        import wandb

        accuracy = wandb.Table(columns=["class", "accuracy"], data=[[c, a] for c, a in per_class.items()])
        samples = wandb.Table(columns=["image", "true", "predicted", "confidence", "correct"])
        # Evenly spaced test images: the same rows in every run of a data set, so runs compare row by row.
        for i in sorted(set(spread_indices(len(targets), num_samples))):
            t, p = int(targets[i]), int(predictions[i])
            samples.add_data(wandb.Image(images[i].permute(1, 2, 0).numpy()), classes[t], classes[p],
                             float(confidences[i]), t == p)
        return {"test/confusion_matrix": wandb.plot.confusion_matrix(
                    y_true=targets.tolist(), preds=predictions.tolist(), class_names=classes,
                    title="Test confusion matrix"),
                "test/per_class_acc": wandb.plot.bar(accuracy, "class", "accuracy", title="Test accuracy per class"),
                "test/predictions": samples}

    def log_model(self, path: Path, metadata: dict) -> None:
        """The checkpoint as a W&B model artifact, aliased `best`."""
        def upload(run):
            import wandb

            artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=metadata)
            artifact.add_file(str(path), name=Path(path).name)
            run.log_artifact(artifact, aliases=["best", "latest"])

        self._wandb("log_artifact", upload)

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else self.resume_id

    def finish(self, exit_code: int = 0) -> None:
        """Always called, also on errors: the last line of metrics.jsonl says how the run ended."""
        self._write({"_exit": exit_code})
        if self.mode == "offline" and self.run is not None:
            log.info("W&B run stored offline; upload it with: %s", self.sync_command())
        self._wandb("finish", lambda run: run.finish(exit_code=exit_code))
        self.run = None
        self.metrics.close()


class NullTracker:
    """What ranks other than 0 track with under DDP: nothing (rank 0 logs for all)."""

    mode, run_id, lines = "disabled", None, 0

    def runtime(self) -> float:
        return 0.0

    def log(self, metrics: dict, step: int) -> None:
        pass

    def summary(self, metrics: dict) -> None:
        pass

    def watch(self, model, log_freq: int) -> None:
        pass

    def log_test_results(self, *args, **kwargs) -> None:
        pass

    def log_model(self, *args, **kwargs) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass
