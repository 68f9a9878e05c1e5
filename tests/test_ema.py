"""trainer.ema_decay: the moving average of the weights is what validation, test and best.pt hold, and it resumes
exactly."""
from __future__ import annotations

import json
import logging
import re

import pytest
import torch
import yaml

import alexnet
from alexnet.checkpoint import load_checkpoint
from alexnet.config import compose, to_typed
from alexnet.data import Loader, load_dataset
from alexnet.ema import WeightEMA
from alexnet.engine import evaluate
from alexnet.errors import UserError
from alexnet.models import model_from_config
from alexnet.training import scored_test_split
from conftest import TINY

RUN = [*TINY, "model.width=0.125", "data.train_size=1200", "data.val_size=200", "data.test_size=200",
       "trainer.deterministic=true", "wandb.mode=disabled", "trainer.ema_decay=0.9"]


def test_the_average_follows_the_decay_with_its_warm_up_by_hand():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightEMA(model, decay=0.5)
    expected = 0.0  # the copy at construction
    for n, value in enumerate([4.0, 8.0, -2.0, 10.0, 1.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        decay = min(0.5, (1 + n) / (10 + n))  # 0.1, 0.1818..., 0.25, 0.3077..., 0.5 (capped from 0.357 on)
        expected = decay * expected + (1 - decay) * value
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
    assert ema.updates == 5 and not ema.module.weight.requires_grad


def test_integer_buffers_take_the_latest_value_and_floats_are_averaged():
    model = torch.nn.BatchNorm1d(2)
    ema = WeightEMA(model, decay=0.99)
    model.train()(torch.randn(8, 2))  # running stats move, num_batches_tracked becomes 1
    ema.update(model)
    assert ema.module.num_batches_tracked.item() == 1
    assert torch.allclose(ema.module.running_mean, 0.9 * model.running_mean)  # decay 0.1 at the first update


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1"])
def test_a_decay_outside_0_1_is_refused_at_composition(value):
    with pytest.raises(UserError, match="trainer.ema_decay"):
        to_typed(compose([*TINY, f"trainer.ema_decay={value}"]))


def test_off_by_default():
    assert to_typed(compose(TINY)).trainer.ema_decay is None


def scored(weights: dict, overrides: list[str], device: str = "cpu", precision: str = "fp32",
           hflip: bool = False) -> dict:
    """The test split scored with `weights`, outside the training code (eager)."""
    cfg = to_typed(compose(overrides))
    data = load_dataset(cfg.data)
    model = model_from_config(cfg.model, num_classes=len(data.classes)).to(device)
    model.load_state_dict(weights)
    test = scored_test_split(data.test, None, cfg.data.split_seed)
    loader = Loader(test, cfg.data.eval_batch_size, cfg.model.input_size, cfg.data.mean, cfg.data.std,
                    torch.device(device))
    return evaluate(model, loader, torch.device(device), precision, hflip=hflip)


def test_validation_test_and_best_pt_use_the_average_not_the_trained_weights(tmp_path):
    overrides = [*RUN, "trainer.epochs=1"]  # one epoch: the best is the last, so best.pt is the average at its end
    summary = alexnet.train(overrides, run_dir=tmp_path / "run")
    last = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    best = load_checkpoint(tmp_path / "run/checkpoints/best.pt")
    assert last["ema"]["updates"] == last["step"] == 15
    assert all(torch.equal(best["model"][k], v) for k, v in last["ema"]["module"].items())
    assert not all(torch.equal(best["model"][k], v) for k, v in last["model"].items())
    # The summary's test loss is the average's (best.pt's), not that of the weights as trained.
    assert scored(best["model"], overrides)["loss"] == pytest.approx(summary["test/loss"], rel=1e-5)
    assert scored(last["model"], overrides)["loss"] != pytest.approx(summary["test/loss"], rel=1e-5)


def test_best_pt_is_the_average_at_the_best_epoch_not_the_last(tmp_path, monkeypatch):
    """Validation says epoch 1 was the best of 2: best.pt is the average at the end of epoch 1 (what a 1-epoch
    run of the same seed ends with), and the final test scores it."""
    import alexnet.training as training

    alexnet.train([*RUN, "trainer.epochs=1"], run_dir=tmp_path / "one")
    after_one = load_checkpoint(tmp_path / "one/checkpoints/last.pt")["ema"]["module"]
    real_evaluate, epochs_seen = training.evaluate, []

    def evaluate(*args, should_stop=None, **kwargs):
        result = real_evaluate(*args, should_stop=should_stop, **kwargs)
        if should_stop is None:  # validation: epoch 1 looks best, epoch 2 worse
            epochs_seen.append(1)
            result = {**result, "acc": 0.9 if len(epochs_seen) == 1 else 0.1}
        return result

    monkeypatch.setattr(training, "evaluate", evaluate)
    summary = alexnet.train([*RUN, "trainer.epochs=2"], run_dir=tmp_path / "two")
    best = load_checkpoint(tmp_path / "two/checkpoints/best.pt")
    last = load_checkpoint(tmp_path / "two/checkpoints/last.pt")
    assert best["epoch"] == 1 and summary["val/best_acc"] == 0.9
    assert all(torch.equal(best["model"][k], v) for k, v in after_one.items())
    assert not all(torch.equal(best["model"][k], v) for k, v in last["ema"]["module"].items())
    assert scored(best["model"], [*RUN, "trainer.epochs=2"])["loss"] == pytest.approx(summary["test/loss"], rel=1e-5)


def test_a_run_with_an_average_resumes_exactly(tmp_path):
    alone = tmp_path / "alone"
    alexnet.train([*RUN, "trainer.epochs=2"], run_dir=alone)
    stopped = tmp_path / "stopped"
    alexnet.train([*RUN, "trainer.epochs=1"], run_dir=stopped)  # constant lr: epochs may change on resume
    alexnet.train([*RUN, "trainer.epochs=2"], run_dir=stopped)
    a, b = (load_checkpoint(d / "checkpoints/last.pt") for d in (alone, stopped))
    assert a["ema"]["updates"] == b["ema"]["updates"] == 30
    assert all(torch.equal(a["ema"]["module"][k], v) for k, v in b["ema"]["module"].items())
    assert all(torch.equal(a["model"][k], v) for k, v in b["model"].items())


def test_the_decay_cannot_change_on_resume(tmp_path):
    alexnet.train([*RUN, "trainer.epochs=1"], run_dir=tmp_path / "run")
    with pytest.raises(UserError, match="trainer.ema_decay: 0.9 in the checkpoint, 0.99 now"):
        alexnet.train([*RUN, "trainer.epochs=2", "trainer.ema_decay=0.99"], run_dir=tmp_path / "run")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_an_update_on_the_gpu_never_waits_for_it():
    """The point of not using AveragedModel.update_parameters: no host sync per step (sync debug mode raises)."""
    model = model_from_config(to_typed(compose(TINY)).model, num_classes=10).cuda()
    ema = WeightEMA(model, decay=0.999)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            ema.update(model)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ema.updates == 3
    assert all(torch.equal(a, b) for a, b in zip(ema.module.state_dict().values(), model.state_dict().values()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_compiled_bf16_run_on_the_gpu_evaluates_its_average(tmp_path):
    overrides = [*RUN, "trainer.device=cuda", "trainer.precision=bf16", "trainer.compile=true", "trainer.epochs=4"]
    overrides.remove("trainer.device=cpu")
    overrides.remove("trainer.deterministic=true")
    summary = alexnet.train(overrides, run_dir=tmp_path / "run")
    last = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    best = load_checkpoint(tmp_path / "run/checkpoints/best.pt")
    assert last["ema"]["updates"] == last["step"] and summary["test/images"] == 200
    if best["epoch"] == 4:
        assert all(torch.equal(best["model"][k], v.cpu()) for k, v in last["ema"]["module"].items())
    # the compiled evaluation scored the average's weights as they were: an eager bf16 scoring of best.pt agrees
    # (kernels differ, so not to the last bit), and the trained weights score otherwise
    eager = scored(best["model"], overrides, "cuda", "bf16")["loss"]
    assert eager == pytest.approx(summary["test/loss"], rel=5e-3)
    assert scored(last["model"], overrides, "cuda", "bf16")["loss"] != pytest.approx(eager, rel=1e-4)


def test_a_checkpoint_from_before_the_average_existed_resumes(tmp_path, caplog):
    """Checkpoints written before trainer.ema_decay hold neither the key nor an average: they trained without."""
    from alexnet.checkpoint import save_checkpoint

    plain = [o for o in RUN if not o.startswith("trainer.ema_decay")]
    alexnet.train([*plain, "trainer.epochs=1"], run_dir=tmp_path / "run")
    path = tmp_path / "run/checkpoints/last.pt"
    old = load_checkpoint(path)
    del old["ema"], old["config"]["trainer"]["ema_decay"]
    for name in ("last.pt", "last.prev.pt"):
        (tmp_path / "run/checkpoints" / name).unlink(missing_ok=True)
    save_checkpoint(path, old)
    with caplog.at_level(logging.INFO, logger="alexnet"):
        alexnet.train([*plain, "trainer.epochs=2"], run_dir=tmp_path / "run")
    assert f"resuming from {path}: epoch 2, batch 0, step 15" in caplog.text
    assert load_checkpoint(path)["step"] == 30


def test_evaluate_scores_the_average_as_the_run_did_or_the_trained_weights_of_last_pt(tmp_path):
    from conftest import run_cli

    # lr: trained weights well apart from the average; flips and bf16: evaluate scores as the run's test did
    overrides = [*RUN, "trainer.epochs=1", "optimizer.lr=0.005", "trainer.tta_hflip=true", "trainer.precision=bf16"]
    summary = alexnet.train(overrides, run_dir=tmp_path / "run")  # best epoch = last epoch
    expected = f"test loss {summary['test/loss']:.4f} | test accuracy {summary['test/acc']:.4f}"
    for name in ("last.pt", "best.pt"):
        result = run_cli("evaluate", [f"ckpt={tmp_path / 'run/checkpoints' / name}", "wandb.mode=disabled",
                                      f"hydra.run.dir={tmp_path / name}"], tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        assert expected in result.stdout, (name, result.stdout[:300])
    assert "moving average" in (tmp_path / "last.pt" / "evaluate.log").read_text()
    # weights=trained: last.pt's own weights, scored as they are; best.pt has none beside its average
    result = run_cli("evaluate", [f"ckpt={tmp_path / 'run/checkpoints/last.pt'}", "weights=trained",
                                  "wandb.mode=disabled", f"hydra.run.dir={tmp_path / 'trained'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    trained = scored(load_checkpoint(tmp_path / "run/checkpoints/last.pt")["model"], overrides, precision="bf16",
                     hflip=True)
    assert abs(trained["loss"] - summary["test/loss"]) > 3e-4  # told apart at the 4 decimals printed (6e-4 here)
    loss, acc = (float(w) for w in re.search(r"test loss (\S+) \| test accuracy (\S+)", result.stdout).groups())
    assert (loss, acc) == (pytest.approx(trained["loss"], abs=1e-4), pytest.approx(trained["acc"], abs=1e-4))
    assert "trained weights" in (tmp_path / "trained" / "evaluate.log").read_text()
    record = yaml.safe_load((tmp_path / "trained" / ".hydra" / "config.yaml").read_text())  # what was scored
    assert (record["model"]["arch"], record["trainer"]["tta_hflip"], record["trainer"]["precision"],
            record["weights"]) == ("alexnet_cifar", True, "bf16", "trained")
    records = [json.loads(line) for line in (tmp_path / "trained" / "metrics.jsonl").read_text().splitlines()]
    assert [r["_summary"]["weights"] for r in records if "_summary" in r] == ["trained"]  # what it scored
    refused = run_cli("evaluate", [f"ckpt={tmp_path / 'run/checkpoints/best.pt'}", "weights=trained",
                                   "wandb.mode=disabled", f"hydra.run.dir={tmp_path / 'refused'}"], tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    assert "holds only the moving average" in refused.stderr and "last.pt" in refused.stderr
    assert not (tmp_path / "refused").exists()  # no half-made eval record
