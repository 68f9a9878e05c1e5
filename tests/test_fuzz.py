"""Fuzzers for the error contract (Hypothesis): every input either works or ends in our UserError naming its cause.

- Overrides generated from the schemas (valid, boundary and wrong-typed values, NaN/inf, huge and negative
  numbers, unknown keys and options, near-miss spellings) either give a config that passes a data-free dry run
  (memory estimate, model on the `meta` device with a forward pass, optimizer, scheduler) or our error naming the
  key. The fast variant composes each set of group options once and applies the value overrides with Hydra's own
  function for them, so a few hundred examples take seconds; the full-path variant goes through `check` (the CLI's
  pre-check) and compose for every example.
- Resume: for random pairs of configs, a checkpoint either loads into the other config's model, optimizer and
  scheduler (the pair differs only where a resume may change) or the resume is refused naming every difference.
- Checkpoints: a real checkpoint file with random damage either loads with its content intact or gives our error.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from omegaconf.errors import OmegaConfBaseException

from alexnet.checkpoint import CheckpointError, save_checkpoint
from alexnet.config import GROUP_SCHEMAS, compose, flatten, to_dict, to_typed
from alexnet.errors import UserError
from alexnet.evaluate import read_checkpoint
from alexnet.models import model_from_config
from alexnet.optim import build_optimizer, build_scheduler
from alexnet.overrides import check, diagnose
from alexnet.performance import resolve
from alexnet.resume import MAY_CHANGE, ResumeMismatch, check_compatible
from alexnet.training import check_memory

FIELDS = sorted({(group, f.name) for group, schemas in GROUP_SCHEMAS.items() for schema in schemas.values()
                 for f in dataclasses.fields(schema) if f.name != "name"} | {("", "seed"), ("", "fail_fast")})
OPTIONS = {"model": ["alexnet", "alexnet_cifar", "resnet", "alexnet_cifr"], "data": ["synthetic", "synthetc"],
           "optimizer": ["sgd", "adam", "adamw", "rmsprop", "adan"], "scheduler": ["none", "cosine", "step", "cosin"],
           "experiment": ["dropout", "lrn", "dropot"], "debug": ["smoke", "smok"]}
NUMBERS = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**32 - 1, 2**63, 1e308, 1e-308, 0.5, 1e-3, 16, 16.5]))
WORDS = st.sampled_from(["true", "false", "null", "abc", "[]", "[1,2]", "[0.5,0.5,0.5]", "''", "inf", "-inf", "nan",
                         "fp8", "auto", "cuda", "cpu", "never", "fp16", "bf16", "fused", "ddp", "skip", "linear"])
VALUES = st.one_of(NUMBERS.map(str), WORDS)
SYNTHETIC_SMALL = ["data=synthetic", "data.train_size=256", "data.val_size=64", "data.test_size=64"]


def key(group: str, field: str) -> str:
    return f"{group}.{field}" if group else field


@st.composite
def an_override(draw) -> tuple[str, str, bool]:
    """(the key the override names, the override, whether it picks a group option)."""
    kind = draw(st.sampled_from(["value", "value", "value", "option", "misspelt"]))
    if kind == "option":
        group = draw(st.sampled_from(sorted(OPTIONS)))
        return group, f"{group}={draw(st.sampled_from(OPTIONS[group]))}", True
    group, field = draw(st.sampled_from(FIELDS))
    if kind == "misspelt" and len(field) > 3:
        i = draw(st.integers(0, len(field) - 2))
        field = field[:i] + field[i + 1:] if draw(st.booleans()) else field[:i] + field[i + 1] + field[i] + field[i + 2:]
    return key(group, field), f"{key(group, field)}={draw(VALUES)}", False


def dry_run(cfg) -> None:
    """What a run does before it touches data: the memory estimate, the model (on `meta`, no memory) with a
    forward pass of one batch, the optimizer and the scheduler."""
    check_memory(cfg, torch.device("cpu"))
    resolve(cfg.trainer, torch.device("cpu"))
    with torch.device("meta"):
        model = model_from_config(cfg.model, num_classes=10)
        x = torch.empty(2, cfg.model.input_channels, cfg.model.input_size, cfg.model.input_size)
        assert model(x).shape == (2, 10)
        optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.data.batch_size)
    build_scheduler(cfg.scheduler, optimizer, steps_per_epoch=4, epochs=cfg.trainer.epochs)


def names_its_cause(error: UserError, pairs) -> bool:
    text = str(error)
    return any(k in text or k.rsplit(".", 1)[-1] in text for k, _, _ in pairs)


@functools.lru_cache(maxsize=None)
def composed(options: tuple[str, ...]):
    """The config of these group options (Hydra's compose, once per set), or the error composing them gives."""
    try:
        return compose(list(options))
    except (HydraException, OmegaConfBaseException) as e:
        return e


def compose_fast(overrides: list[str], pairs) -> object:
    """Compose as Hydra does (group options, then value overrides by Hydra's own function), reusing the group
    options' composition; raises our error as `check` would."""
    options = tuple(o for (_, o, is_option) in pairs if is_option)
    base = composed(("data=synthetic", *options))
    if isinstance(base, Exception):
        raise diagnose(base, overrides)
    cfg = base.copy()
    try:
        values = [o for (_, o, is_option) in pairs if not is_option]
        ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides(values), cfg)
    except (HydraException, OmegaConfBaseException) as e:
        raise diagnose(e, overrides) from e
    return to_typed(cfg)


def assert_config_or_our_error(pairs, full_path: bool) -> None:
    overrides = ["data=synthetic", *(o for _, o, _ in pairs)]
    try:
        if full_path:
            check(overrides)  # the CLI's pre-check: compose and to_typed for every job
            cfg = to_typed(compose(overrides))
        else:
            cfg = compose_fast(overrides, pairs)
        dry_run(cfg)
        event("a config that dry-runs")
    except UserError as e:
        event("our error")
        assert names_its_cause(e, pairs), (overrides, str(e))
        assert "Traceback" not in str(e) and len(str(e).splitlines()) <= 8, str(e)


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(an_override(), min_size=1, max_size=3))
def test_overrides_give_a_config_that_dry_runs_or_our_error_naming_the_key(pairs):
    assert_config_or_our_error(pairs, full_path=False)


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(an_override(), min_size=1, max_size=3))
def test_the_clis_own_check_agrees_on_generated_overrides(pairs):
    assert_config_or_our_error(pairs, full_path=True)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(an_override(), min_size=1, max_size=4))
def test_overrides_fuzzed_at_length(pairs):
    assert_config_or_our_error(pairs, full_path=False)


@pytest.mark.slow
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(an_override(), min_size=1, max_size=4))
def test_the_clis_own_check_fuzzed_at_length(pairs):
    assert_config_or_our_error(pairs, full_path=True)


# --- resume: random pairs of configs --------------------------------------------------------------------------
TINY = ("model=alexnet_cifar", "model.width=0.0625", *SYNTHETIC_SMALL)
GROUP_CHOICES = {"optimizer": ["sgd", "adam"], "scheduler": ["none", "cosine"]}
VALUE_CHOICES = {"model.width": [0.0625, 0.125], "model.lrn": [False, True], "model.dropout": [0.0, 0.5],
                 "optimizer.lr": [0.01, 0.02], "optimizer.weight_decay": [0.0, 5e-4], "trainer.epochs": [2, 3],
                 "data.batch_size": [32, 64], "seed": [0, 1], "trainer.compile": ["false", "default"],
                 "trainer.channels_last": [True, False], "wandb.mode": ["offline", "disabled"],
                 "data.eval_batch_size": [100, 200], "trainer.checkpoint_every_n_steps": [100, 500]}


@st.composite
def a_config(draw) -> tuple[str, ...]:
    groups = tuple(f"{g}={draw(st.sampled_from(v))}" for g, v in GROUP_CHOICES.items())
    values = tuple(f"{k}={draw(st.sampled_from(v))}" for k, v in VALUE_CHOICES.items() if draw(st.booleans()))
    return groups + values


@functools.lru_cache(maxsize=None)
def typed(overrides: tuple[str, ...]):
    groups = tuple(o for o in overrides if o.split("=")[0] in GROUP_CHOICES)
    cfg = composed(TINY + groups).copy()
    values = [o for o in overrides if o not in groups]
    ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides(values), cfg)
    return to_typed(cfg)


def built(cfg):
    torch.manual_seed(0)
    model = model_from_config(cfg.model, num_classes=10)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.data.batch_size)
    return model, optimizer, build_scheduler(cfg.scheduler, optimizer, steps_per_epoch=4, epochs=cfg.trainer.epochs)


@functools.lru_cache(maxsize=None)
def trained_state(overrides: tuple[str, ...]) -> dict:
    """The state a checkpoint of this config holds after one step."""
    model, optimizer, scheduler = built(typed(overrides))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    scheduler.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}


def may_change(k: str, scheduler: str) -> bool:
    if k == "trainer.epochs" and scheduler == "cosine":
        return False
    return any(k == f or (f.endswith(".") and k.startswith(f)) for f in MAY_CHANGE)


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(a_config(), a_config())
def test_a_checkpoint_resumes_under_a_compatible_config_and_is_refused_under_any_other(saved, now):
    saved_cfg, now_cfg = to_dict(typed(saved)), to_dict(typed(now))
    old, new = flatten(saved_cfg), flatten(now_cfg)
    differing = {k for k in old.keys() | new.keys() if old.get(k) != new.get(k)}
    must_refuse = {k for k in differing if not may_change(k, new.get("scheduler.name"))}
    try:
        check_compatible("last.pt", saved_cfg, now_cfg)
    except ResumeMismatch as e:
        event("refused")
        assert must_refuse, f"refused a resume that changes only {sorted(differing)}"
        assert all(f"  {k}:" in str(e) for k in must_refuse), (sorted(must_refuse), str(e))
        return
    assert not must_refuse, f"resumed across {sorted(must_refuse)}"
    event("resumed")
    model, optimizer, scheduler = built(typed(now))
    state = trained_state(saved)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])


# --- checkpoints: random damage ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> tuple[bytes, dict]:
    cfg = typed(("optimizer=sgd", "scheduler=none"))
    model, _, _ = built(cfg)
    state = {"format": 2, "model": model.state_dict(), "config": to_dict(cfg), "classes": [str(i) for i in range(10)],
             "epoch": 1, "val_acc": 0.5, "run": {}}
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, state)
    return path.read_bytes(), state


DAMAGE = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                                        min_size=1, max_size=4)),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("zero"), st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 4096))),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("replace"), st.binary(max_size=256)))


def damaged(data: bytes, damage) -> bytes:
    kind, how = damage
    b = bytearray(data)
    if kind == "flip":
        for where, xor in how:
            b[int(where * len(b))] ^= xor
    elif kind == "truncate":
        del b[int(how * len(b)):]
    elif kind == "zero":
        start = int(how[0] * len(b))
        b[start:start + how[1]] = bytes(len(b[start:start + how[1]]))
    elif kind == "append":
        b += how
    else:
        b = bytearray(how)
    return bytes(b)


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(DAMAGE)
def test_a_damaged_checkpoint_loads_intact_or_gives_our_error(checkpoint_bytes, tmp_path, damage):
    data, state = checkpoint_bytes
    path = tmp_path / "best.pt"
    path.write_bytes(damaged(data, damage))
    try:
        loaded = read_checkpoint(str(path))
    except CheckpointError as e:
        event("our error")
        assert str(path) in str(e) and "Fix:" in str(e), str(e)
        return
    event("loaded intact")
    # loaded: the damage hit bytes that carry nothing (zip padding, a comment), and every value is the original
    assert loaded["config"] == state["config"] and loaded["classes"] == state["classes"]
    assert loaded["model"].keys() == state["model"].keys()
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    assert not math.isnan(loaded["val_acc"])
