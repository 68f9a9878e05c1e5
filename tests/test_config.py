"""Every option of every config group composes, passes its schema and builds; bad values fail with clear messages."""
from __future__ import annotations

import pytest
from omegaconf.errors import OmegaConfBaseException
from hydra.errors import HydraException

from alexnet.config import CONF_DIR, compose, to_typed
from alexnet.errors import ConfigError
from alexnet.models import count_parameters, model_from_config
from alexnet.optim import build_optimizer, build_scheduler

GROUPS = ["model", "data", "optimizer", "scheduler", "trainer"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)
    assert {"alexnet", "alexnet_cifar"} <= {o for g, o in OPTIONS if g == "model"}
    assert {"cifar10", "imagefolder", "synthetic"} <= {o for g, o in OPTIONS if g == "data"}
    assert {"sgd", "adam", "adamw"} <= {o for g, o in OPTIONS if g == "optimizer"}
    assert {"none", "step", "cosine"} <= {o for g, o in OPTIONS if g == "scheduler"}
    assert {"default"} <= {o for g, o in OPTIONS if g == "trainer"}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_each_default_lives_in_one_place(group, option):
    """A conf/ YAML file sets only what differs from its schema's dataclass default: one source per default."""
    import dataclasses

    from omegaconf import OmegaConf

    from alexnet.config import GROUP_SCHEMAS

    yaml_values = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))
    (schema_line,) = yaml_values.pop("defaults")
    schema = GROUP_SCHEMAS[group][next(iter(schema_line.values())) if isinstance(schema_line, dict)
                                  else schema_line.rsplit(": ", 1)[-1]]
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(schema) if f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING}
    repeated = {k: v for k, v in yaml_values.items() if k in defaults and defaults[k] == v}
    assert not repeated, f"conf/{group}/{option}.yaml repeats its schema's defaults: {repeated}"


def test_debug_smoke_applies_after_an_experiment():
    """Both spellings of the experiment; the smoke settings win over the experiment's own trainer values."""
    for experiment in ("+experiment=fast_cifar", "experiment=fast_cifar"):
        cfg = to_typed(compose([experiment, "debug=smoke"]))
        assert (cfg.trainer.epochs, cfg.trainer.limit_batches, cfg.trainer.limit_test_images) == (1, 5, 1000)
        assert cfg.model.arch == "alexnet_cifar" and cfg.trainer.label_smoothing == 0.1  # the rest is the study's
    assert to_typed(compose(["+experiment=fast_cifar"])).trainer.epochs == 40


def test_budget_cpu_shrinks_any_study_the_same_way():
    """The README's Results scale without editing a file: after the experiment, before debug=smoke."""
    from omegaconf import open_dict

    from alexnet.config import EXPERIMENTS_DIR

    for name in sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml")):
        composed = compose([f"+experiment={name}", "budget=cpu"], return_hydra_config=True)
        assert str(composed.hydra.sweeper.params.seed) == "0,1", name
        with open_dict(composed):
            del composed["hydra"]
        cfg = to_typed(composed)
        assert (cfg.model.width, cfg.trainer.epochs, cfg.trainer.precision.value) == (0.25, 10, "bf16"), name
    assert to_typed(compose(["+experiment=dropout", "budget=cpu", "debug=smoke"])).trainer.epochs == 1


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_builds(group, option):
    cfg = to_typed(compose([f"{group}={option}", "model.width=0.125"]))
    assert getattr(cfg, group) is not None
    if group == "data":
        assert cfg.data.name == option
    model = model_from_config(cfg.model, num_classes=10)
    assert count_parameters(model) > 0
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    assert type(optimizer).__name__.lower() == cfg.optimizer.name
    scheduler = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch=10, epochs=cfg.trainer.epochs)
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr()[0] > 0


def test_defaults_are_the_documented_ones():
    cfg = to_typed(compose([]))
    assert (cfg.model.arch, cfg.data.name, cfg.optimizer.name, cfg.scheduler.name) == (
        "alexnet", "cifar10", "sgd", "none")
    assert (cfg.optimizer.momentum, cfg.optimizer.weight_decay) == (0.9, 5e-4)
    assert (cfg.data.val_size, cfg.model.input_size, cfg.model.final_relu) == (5000, 224, False)
    assert cfg.wandb.mode.value == "auto"


@pytest.mark.parametrize("overrides,message", [
    (["model.dropout=1.0"], "model.dropout=1.0 is not allowed: a float in [0, 1)"),
    (["model.dropout=-0.1"], "model.dropout=-0.1"),
    (["model.input_size=66"], "alexnet needs inputs of at least 67x67"),
    (["model=alexnet_cifar", "model.input_size=14"], "alexnet_cifar needs inputs of at least 15x15"),
    (["model.width=0"], "model.width=0.0"),
    (["optimizer.lr=-1"], "optimizer.lr=-1.0 is not allowed: a positive, finite learning rate"),
    (["optimizer.lr=inf"], "optimizer.lr=inf is not allowed: a positive, finite learning rate"),
    (["optimizer.lr=nan"], "optimizer.lr=nan is not allowed"),
    (["trainer.limit_test_images=0"], "trainer.limit_test_images=0 is not allowed"),
    (["seed=-1"], "seed=-1 is not allowed: an integer in [0, 2**32)"),
    (["seed=4294967296"], "seed=4294967296 is not allowed"),
    (["model.width=inf"], "model.width=inf is not allowed: a channel multiplier in (0, 16]"),
    (["model.width=17"], "model.width=17.0 is not allowed"),
    (["model.input_size=4096"], "model.input_size=4096 is not allowed: at most 1024"),
    (["data.crop_padding=33"], "data.crop_padding=33 is not allowed: an integer from 0 to the image side (32)"),
    (["data.batch_size=0"], "data.batch_size=0 is not allowed: an integer >= 1"),
    (["trainer.epochs=0"], "trainer.epochs=0"),
    (["scheduler.warmup_epochs=1e308"], "scheduler.warmup_epochs=1e+308 is not allowed"),  # a fuzzer's finding
    (["optimizer=adam", "optimizer.eps=-1"], "optimizer.eps=-1.0 is not allowed: a positive, finite float"),  # too
    (["+model.dropuot=0.3"], "unknown config key 'model.dropuot'"),
])
def test_out_of_range_values_fail(overrides, message):
    with pytest.raises(ConfigError) as e:
        to_typed(compose(overrides))
    assert message in str(e.value)


@pytest.mark.parametrize("overrides", [["model.dropuot=0.3"], ["model.input_size=abc"], ["trainer.device=gpu"],
                                       ["trainer.precision=fp8"], ["model=resnet"], ["data=imagenet"],
                                       ["optimizer=adam", "optimizer.nesterov=true"]])
def test_typos_and_wrong_types_fail_at_composition(overrides):
    with pytest.raises((HydraException, OmegaConfBaseException)):
        compose(overrides)


def test_enum_fields_and_plain_dict():
    from alexnet.config import to_dict

    cfg = compose(["trainer.precision=bf16"])
    assert to_typed(cfg).trainer.precision.value == "bf16"
    assert to_dict(cfg)["trainer"]["precision"] == "bf16"
