"""`python -m alexnet.evaluate ckpt=PATH [overrides]`: score a checkpoint on a test split.

The model is rebuilt from the config stored in the checkpoint, so no model overrides are needed (any given are
ignored, with a warning). The data is the checkpoint's too unless the command line changes it: `data=OPTION`
picks another source, `data.KEY=VALUE` adjusts the checkpoint's. Prints the test loss and accuracy, per-class
accuracy and the confusion matrix, and logs them as a W&B run with job_type=eval in the training run's group.
"""
from __future__ import annotations

from alexnet.errors import quiet_ctrl_c_while_starting

quiet_ctrl_c_while_starting(__name__)  # before the heavy imports below

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from alexnet.checkpoint import CheckpointError, NotACheckpoint, load_checkpoint
from alexnet.config import CONF_DIR, GROUP_SCHEMAS, to_dict, to_typed
from alexnet.errors import ConfigError, UserError, contract, first_line
from alexnet.data import Loader, load_dataset
from alexnet import performance, rundir
from alexnet.logs import FILE_ONLY
from alexnet.engine import confusion_matrix, evaluate, per_class_accuracy
from alexnet.models import model_from_config
from alexnet.state import upgrade
from alexnet.training import resolve_device, scored_test_split
from alexnet.tracking import Tracker

log = logging.getLogger("alexnet")


def read_checkpoint(path: str) -> dict:
    if Path(path).is_dir():
        inside = sorted(str(p) for p in Path(path).glob("**/checkpoints/*.pt"))[:3]
        raise ConfigError(f"ckpt={path} is a directory. Fix: pass a checkpoint file"
                          f"{', e.g. ckpt=' + inside[0] if inside else ', e.g. ckpt=<run dir>/checkpoints/best.pt'}.")
    if not Path(path).is_file():
        raise ConfigError(f"ckpt={path} does not exist. Fix: pass a checkpoint file, e.g. "
                          f"ckpt=outputs/<date>/<time>/checkpoints/best.pt")
    try:
        return upgrade(load_checkpoint(Path(path)))
    except NotACheckpoint as e:
        raise NotACheckpoint(f"{e}. Fix: pass checkpoints/best.pt or checkpoints/last.pt of a training run.") from e
    except CheckpointError as e:  # truncated, or a damaged byte: say so, not "not a checkpoint"
        raise CheckpointError(f"{e}. Fix: evaluate another checkpoint of the run (best.pt, last.pt, "
                              f"last.prev.pt).") from e


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


# How the run's own test scored (flips averaged in, autocast precision): kept unless the command line sets them,
# so that evaluating a checkpoint gives the number its run logged
SCORING_KEYS = ("tta_hflip", "precision")


def checkpoint_config(dict_cfg: DictConfig, trained: dict, overrides: list[str]) -> DictConfig:
    """The composed config with the checkpoint's model, its scoring settings and its data, each unless the command
    line changed it."""
    keys = [_key(o) for o in overrides]
    if any(k == "model" or k.startswith("model.") for k in keys):
        log.warning("model overrides are ignored: the model is rebuilt from the checkpoint's config")
    cfg = dict_cfg.copy()
    cfg.model = OmegaConf.merge(OmegaConf.structured(GROUP_SCHEMAS["model"]["default"]), trained["model"])
    for key in SCORING_KEYS:
        if f"trainer.{key}" not in keys and key in trained.get("trainer", {}):
            cfg.trainer[key] = trained["trainer"][key]
    if dict_cfg.data.name == trained["data"]["name"]:  # the checkpoint's data, with any data.KEY=VALUE on top
        data = OmegaConf.merge(OmegaConf.structured(GROUP_SCHEMAS["data"][trained["data"]["name"]]), trained["data"])
        for key in (k for k in keys if k.startswith("data.")):
            OmegaConf.update(data, key[len("data."):], OmegaConf.select(dict_cfg, key), merge=False)
        cfg.data = data
    return cfg


def checkpoint_weights(ckpt: dict, which: str, path: str) -> tuple[dict, str]:
    """The state dict to score and what it is ("average" or "trained"). A run with trainer.ema_decay keeps its
    average in last.pt beside the trained weights, and only the average in best.pt (validation chose by it)."""
    ema_decay = ckpt["config"]["trainer"].get("ema_decay")
    if which == "trained" and ckpt.get("ema"):
        log.info("scoring the checkpoint's trained weights, not their moving average (weights=trained)")
        return ckpt["model"], "trained"
    if which == "trained" and ema_decay:
        raise ConfigError(f"weights=trained: {path} holds only the moving average of the weights (best.pt of a "
                          f"run with trainer.ema_decay={ema_decay}). Fix: evaluate that run's checkpoints/last.pt "
                          f"with weights=trained, or drop weights=trained to score the average.")
    if ckpt.get("ema"):  # last.pt of a run with trainer.ema_decay: score what its validation scored
        log.info("scoring the checkpoint's moving average of the weights (trainer.ema_decay=%s), as the run's "
                 "validation and test did; weights=trained scores the trained ones", ema_decay)
        return ckpt["ema"]["module"], "average"
    return ckpt["model"], "average" if ema_decay else "trained"  # best.pt: what validation chose


def evaluate_checkpoint(dict_cfg: DictConfig) -> float:
    if OmegaConf.is_missing(dict_cfg, "ckpt"):
        raise ConfigError("no checkpoint to score. Fix: pass ckpt=PATH, e.g. "
                          "ckpt=outputs/<date>/<time>/checkpoints/best.pt")
    ckpt = read_checkpoint(dict_cfg.ckpt)
    trained_run = ckpt.get("run", {})
    overrides = list(HydraConfig.get().overrides.task)
    composed = checkpoint_config(dict_cfg, ckpt["config"], overrides)
    composed.data.val_size = 1  # only the test split is scored: no train/val split can be in the way (tiny sets)
    cfg = to_typed(composed)
    weights, scored = checkpoint_weights(ckpt, cfg.weights.value, cfg.ckpt)  # before the data: a refusal is quick
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    device = resolve_device(cfg.trainer.device.value)
    cfg.trainer = performance.resolve(cfg.trainer, device)
    performance.configure_backends(cfg.trainer, device)
    log.info("checkpoint: %s (epoch %s, val acc %.4f) | run dir: %s", cfg.ckpt, ckpt.get("epoch"),
             ckpt.get("val_acc", float("nan")), run_dir)
    log.info("config:\n%s", OmegaConf.to_yaml(composed, resolve=True), extra=FILE_ONLY)
    # Hydra wrote the composed defaults at start (its model, no flips): the record is what gets scored
    record = to_dict(composed)
    rundir.write_record(run_dir, record, overrides)

    data = load_dataset(cfg.data)
    if data.classes != ckpt["classes"]:  # the same names in the same order: else the scores mean nothing
        raise UserError(f"the checkpoint was trained on classes {ckpt['classes']} but data={cfg.data.name} has "
                        f"{data.classes}. Fix: evaluate on a data set with the checkpoint's classes.")
    model = model_from_config(cfg.model, num_classes=len(data.classes)).to(device)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # possible only for a file made by hand: a real one's digest covers both
        raise NotACheckpoint(f"the weights in {cfg.ckpt} do not fit the model its config describes "
                             f"({first_line(e)}). Fix: pass a checkpoint written by alexnet.run.") from e
    model = performance.maybe_compile(performance.set_memory_format(model, cfg.trainer), cfg.trainer)
    test = scored_test_split(data.test, cfg.trainer.limit_test_images, cfg.data.split_seed)  # never cut by limit_batches
    loader = Loader(test, cfg.data.eval_batch_size, cfg.model.input_size, cfg.data.mean, cfg.data.std, device,
                    channels_last=cfg.trainer.channels_last, channels=cfg.model.input_channels)
    log.info("fast path: %s | test-time flips %s (trainer.tta_hflip; precision and flips as the run's test "
             "unless set here)", performance.describe(cfg.trainer, device), cfg.trainer.tta_hflip)
    result = evaluate(model, loader, device, cfg.trainer.precision.value, hflip=cfg.trainer.tta_hflip)
    confusion = confusion_matrix(result["predictions"], result["targets"], len(data.classes))
    print_results(result, data.classes, confusion)

    config = {**record, "trained_run": trained_run}
    name = f"eval:{trained_run.get('name') or Path(cfg.ckpt).parent.parent.name}"
    tracker = Tracker(run_dir, config, cfg.wandb.mode.value, trained_run.get("project") or cfg.wandb.project,
                      trained_run.get("entity") or cfg.wandb.entity, cfg.wandb.group or trained_run.get("group"),
                      cfg.wandb.tags, name, job_type="eval", init_timeout=cfg.wandb.init_timeout)
    exit_code = 1
    try:
        tracker.log_test_results(result, data.classes, test.images, 0, cfg.wandb.sample_predictions)
        tracker.summary({"test/acc": result["acc"], "test/loss": result["loss"], "test/images": len(test),
                         "ckpt": str(cfg.ckpt), "weights": scored, **{f"test/acc_{c}": a for c, a in
                                                   zip(data.classes, per_class_accuracy(confusion)) if a is not None}})
        exit_code = 0
    finally:
        tracker.finish(exit_code)
    return result["acc"]


def print_results(result: dict, classes: list[str], confusion) -> None:
    from rich.console import Console
    from rich.table import Table

    print(f"test loss {result['loss']:.4f} | test accuracy {result['acc']:.4f} ({len(result['targets'])} images)")
    per_class = Table(title="per-class accuracy")
    per_class.add_column("class")
    per_class.add_column("accuracy", justify="right")
    per_class.add_column("images", justify="right")
    for name, acc, count in zip(classes, per_class_accuracy(confusion), confusion.sum(1).tolist()):
        per_class.add_row(name, "n/a" if acc is None else f"{acc:.4f}", str(count))
    matrix = Table(title="confusion matrix (rows: true class, columns: predicted class, by index)")
    matrix.add_column("true class")
    for i in range(len(classes)):
        matrix.add_column(str(i), justify="right")
    for i, (name, row) in enumerate(zip(classes, confusion.tolist())):
        matrix.add_row(f"{i} {name}", *map(str, row))
    console = Console(width=max(100, 12 + 7 * len(classes)))
    console.print(per_class)
    console.print(matrix)


@hydra.main(config_path=str(CONF_DIR), config_name="evaluate", version_base="1.3")
def hydra_main(dict_cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)  # always a new one: outputs/eval/<date>/<time>
    with contract():  # here, not only in main: Hydra would add its own "Error executing job" line to ours
        try:
            return evaluate_checkpoint(dict_cfg)
        except BaseException as e:
            if not isinstance(e, SystemExit):  # an error or a Ctrl-C: no eval record (always a new dir) half-made
                rundir.discard(run_dir)
            raise


def checkpoint_argument(argv: list[str]) -> str | None:
    """The value of `ckpt=` as Hydra reads it (`ckpt='a=b/best.pt'` is the path a=b/best.pt), or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for argument in (a for a in argv if _key(a) == "ckpt"):
        try:
            return str(OverridesParser.create().parse_override(argument).value())
        except Exception:  # the override check names the syntax error
            return None
    return None


def main() -> None:
    """Compose with the checkpoint's data option, so that `data.KEY=VALUE` adjusts the checkpoint's own data."""
    argv = sys.argv[1:]
    ckpt = checkpoint_argument(argv)
    if ckpt and "data" not in map(_key, argv):
        try:
            name = load_checkpoint(Path(ckpt), mmap=True)["config"]["data"]["name"]
            sys.argv.insert(1, f"data={name}")
        except Exception:
            pass  # evaluate_checkpoint reports a missing or unreadable checkpoint
    rundir.NAME_ONLY = True  # its config includes the run's, whose run dir resolver would make a training run dir
    with contract():
        from alexnet.overrides import check

        check(sys.argv[1:], config_name="evaluate")
        hydra_main()


if __name__ == "__main__":
    main()
