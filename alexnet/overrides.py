"""The command line's overrides, checked before Hydra runs anything: a mistyped key, option or value ends in the
contract (one `error:` naming it, with the closest name where one is close, exit 2), not Hydra's multi-line report
with exit 1, whose `+key=value` hint would lead into our unknown-key error.

Each job of a multirun is checked too: every value of a sweep (`model.dropout=0.0,abc`), before any job starts.
"""
from __future__ import annotations

import difflib
import functools
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, IntervalSweep
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
import yaml

from alexnet.config import compose, to_typed
from alexnet.errors import ConfigError, RunDirRefused, first_line, yaml_problem
from alexnet.rundir import check_can_make

# Hydra flags after which the next argument is the flag's value, not an override
VALUED_FLAGS = {"--cfg", "-c", "--package", "-p"}
# Hydra flags that do not run the app (or run it from another config): Hydra's own business
HYDRA_ONLY = {"--help", "-h", "--hydra-help", "--version", "--shell-completion", "-sc", "--info", "-i",
              "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}


def closest(name: str, candidates) -> str:
    """` Did you mean 'x'?` for the closest candidate, or nothing when none is close."""
    match = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.75)
    return f" Did you mean '{match[0]}'?" if match else ""


def keys_of(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in node.keys():
        value = node._get_node(key)
        keys.append(f"{prefix}{key}")
        if isinstance(value, DictConfig):
            keys += keys_of(node[key], f"{prefix}{key}.")
    return keys


def explain(error: Exception, override: str, known: list[str]) -> str:
    """Our message for a Hydra or OmegaConf composition error caused by `override`."""
    key, _, value = override.lstrip("+~").partition("=")
    if isinstance(error, MissingConfigException) and error.options:
        group = (error.missing_cfg_file or key).rsplit("/", 1)[0]
        choice = (error.missing_cfg_file or "").rsplit("/", 1)[-1]
        return (f"{group}={choice} is not an option of `{group}`, which has: {', '.join(error.options)}."
                f"{closest(choice, error.options)} Fix: {group}=<one of them>.")
    cause = error.__cause__
    if "Could not override" in str(error) or "Could not append" in str(error):
        return (f"unknown config key '{key}'.{closest(key, known)} Fix the spelling "
                f"(`python -m alexnet.run --cfg job` prints every key).")
    lines = str(cause or error).strip().splitlines() or [type(error).__name__]
    detail = f"{lines[0]} {lines[1].strip()}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    if "expected one of" in detail:  # an enum: "Invalid value 'fp8', expected one of [auto, fp32, ...]"
        allowed = "one of " + detail.split("expected one of", 1)[1].strip(" []")
    elif "could not be converted to" in detail:  # "Value 'abc' of type 'str' could not be converted to Integer"
        kind = detail.rsplit("converted to", 1)[1].strip()
        allowed = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}.get(kind, f"a {kind}")
    else:
        allowed = detail
    return f"{key}={value} is not allowed: {allowed}. Fix the override `{key}=...`."


def split_argv(argv: list[str]) -> tuple[list[str], bool] | None:
    """(the overrides, multirun?), or None when Hydra only prints something (--help, --info, ...)."""
    overrides, multirun, skip = [], False, False
    for arg in argv:
        if skip:
            skip = False
        elif arg.split("=", 1)[0] in HYDRA_ONLY:
            return None
        elif arg in ("-m", "--multirun", "hydra.mode=MULTIRUN"):
            multirun = True
            if any(a.split("=", 1)[0] in ("--cfg", "-c") for a in argv):
                raise ConfigError("-m and --cfg do not go together: a multirun runs many configs, --cfg prints "
                                  "one. Fix: drop -m (and give one value per key) to print a job's config.")
        elif arg in VALUED_FLAGS:
            skip = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides, multirun


def jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists to check: the run's, or one per value of each discrete sweep (not every
    combination: each value is checked once, with the other overrides' first values)."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"{first_line(e)}. Fix the override's syntax (`key=value`; quote a value that holds `=`, "
                          f"`,` or spaces: key='a=b,c'; to sweep the values of key=a,b, add -m).") from e
    if not multirun:
        sweeps = [o for o in parsed if o.is_sweep_override()]
        if sweeps and isinstance(sweeps[0].value(), IntervalSweep):
            raise ConfigError(f"{sweeps[0].input_line} is a range to search, but this is a single run. Fix: "
                              f"{SEARCH_FIX.format('-m ')}, or give one value.")
        if sweeps:
            raise ConfigError(f"{sweeps[0].input_line} is a sweep, but this is a single run. Fix: add -m to run one "
                              f"job per value, or write a list value as key=[a,b].")
        return [overrides]
    hydra_sweep = next((o for o in parsed if o.is_sweep_override() and o.is_hydra_override()), None)
    if hydra_sweep is not None:  # Hydra's own message names no fix
        key = hydra_sweep.get_key_element().lstrip("+~")
        fix = (f"sweep the key itself, {key.removeprefix('hydra.sweeper.params.')}={hydra_sweep.get_value_string()} "
               f"(it replaces a study's own sweep of that key)" if key.startswith("hydra.sweeper.params.") else
               f"give {key} one value" + ("" if "/" in key else f" (quote a value that holds commas: {key}='a,b')"))
        raise ConfigError(f"{hydra_sweep.input_line} sweeps a setting of Hydra's, which Hydra cannot do. Fix: {fix}.")
    first, alternatives = [], []
    for o in parsed:
        if o.is_sweep_override() and o.is_discrete_sweep() and not isinstance(o.value(), Glob):
            values = list(o.sweep_string_iterator())
            first.append(f"{o.get_key_element()}={values[0]}")
            alternatives += [(len(first) - 1, f"{o.get_key_element()}={v}") for v in values[1:]]
        elif o.is_sweep_override():  # interval() for a search, glob(): the sweeper expands and checks them
            continue
        else:
            first.append(o.input_line)
    checks = [first]
    for index, replacement in alternatives:
        checks.append(first[:index] + [replacement] + first[index + 1:])
    return checks


SEARCH_FIX = ("add {}hydra/sweeper=optuna hydra.sweeper.n_trials=N to sample N values from it (the default "
              "sweeper takes lists: key=a,b,c)")


def check_sweeper_takes(overrides: list[str], cfg: DictConfig) -> None:
    """interval() is for a sweeper that samples (Optuna); Hydra's basic sweeper stops with a bare
    'does not support sweep type : INTERVAL_SWEEP' only once the sweep starts."""
    if "BasicSweeper" not in str(OmegaConf.select(cfg, "hydra.sweeper._target_")):
        if OmegaConf.select(cfg, "hydra.runtime.choices.budget"):  # its seeds would become a searched parameter
            raise ConfigError(f"budget={OmegaConf.select(cfg, 'hydra.runtime.choices.budget')} sweeps seeds, "
                              f"which a sampling sweeper (Optuna) would search as a hyperparameter. Fix: drop "
                              f"budget=... and set its values yourself: model.width=0.25 trainer.epochs=10 "
                              f"trainer.precision=bf16.")
        return
    parsed = OverridesParser.create().parse_overrides(overrides)
    ranges = [o.input_line for o in parsed if o.is_sweep_override() and isinstance(o.value(), IntervalSweep)]
    if ranges:
        raise ConfigError(f"{ranges[0]} is a range to search, which the default (basic) sweeper cannot sweep. "
                          f"Fix: {SEARCH_FIX.format('')}.")


def diagnose(error: Exception, overrides: list[str], config_name: str = "config") -> ConfigError:
    """Our error for Hydra's or OmegaConf's composition `error`, naming the override that caused it."""
    culprit = next((o for o in overrides if _names(o, error)), overrides[-1] if overrides else "")
    removed = [o[1:].split("=")[0] for o in overrides if o.startswith("~")]
    group = next((g for g in removed if culprit.lstrip("+").startswith(f"{g}.")), None)
    if group:  # `~model model.width=0.5`: the field's group is gone
        return ConfigError(f"~{group} removes the {group} group, but {culprit} sets a field of it. Fix: drop "
                           f"~{group} (a run needs a {group}), or the {group}.* overrides.")
    return ConfigError(explain(error, culprit, known_keys(config_name)))


@functools.lru_cache
def known_keys(config_name: str = "config") -> list[str]:
    """Every key of the config, and the optional groups: the names a misspelt one is compared with."""
    return keys_of(compose([], config_name=config_name)) + ["experiment", "budget", "debug"]


def check(argv: list[str], config_name: str = "config",
          sweep_params: list[str] = ()) -> list[tuple[list[str], object]]:
    """Compose and validate every job the command line asks for, and check the run (or sweep) dir can be made;
    raise our UserError at the first problem. Nothing is written. Returns each job's overrides with its typed
    config. `sweep_params`: a study's own sweep (its hydra.sweeper.params) to expand into jobs as well.
    config_name="evaluate": alexnet.evaluate's command line (its values are checked once the checkpoint's
    config is merged in; no typed config)."""
    split = split_argv(argv)
    if split is None:
        return []
    checks, checked = jobs([*split[0], *sweep_params], split[1]), []
    for overrides in checks:
        try:
            cfg = compose(overrides, return_hydra_config=True, config_name=config_name)
        except (HydraException, OmegaConfBaseException) as e:
            raise diagnose(e, overrides, config_name) from e
        except yaml.YAMLError as e:  # a config file of the user's own (hydra.searchpath) that is not YAML
            raise ConfigError(yaml_problem(e)) from e
        typed = None
        if config_name == "config":
            job = cfg.copy()
            with open_dict(job):
                del job["hydra"]
            typed = to_typed(job)  # the value bounds (a seed outside [0, 2**32), model.width=inf, ...)
        if overrides is checks[0] and not any(a in ("--cfg", "-c") for a in argv):
            check_output_dir(cfg, multirun=split[1])
            if split[1]:
                check_sweeper_takes([*split[0], *sweep_params], cfg)
                check_same_sweep(Path(str(OmegaConf.select(cfg, "hydra.sweep.dir"))), split[0])
        checked.append((overrides, typed))
    return checked


def check_same_sweep(sweep_dir: Path, overrides: list[str]) -> None:
    """A sweep dir given again must be resumed with its own overrides (up to what a resume may change), or one
    study dir would mix two sweeps and its multirun.yaml would be overwritten."""
    from alexnet.config import normalize_override
    from alexnet.resume import may_change

    try:
        recorded = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
        before_parsed = OverridesParser.create().parse_overrides([normalize_override(o) for o in recorded])
    except (OSError, TypeError, KeyError, yaml.YAMLError, HydraException):
        return  # a new sweep dir, or no readable record: each job's own checks decide
    def kept(parsed) -> dict[str, str]:  # the parsed value (spelling does not matter) -> the override as typed
        return {f"{o.get_key_element()}={o.value()!r}": o.input_line for o in parsed
                if not may_change(o.get_key_element())
                and not o.get_key_element().startswith(("hydra.", "hydra/"))}  # how it runs, not what
    before = kept(before_parsed)
    now = kept(OverridesParser.create().parse_overrides([normalize_override(o) for o in overrides]))
    if before.keys() != now.keys():
        there = [before[k] for k in sorted(before.keys() - now.keys())]
        here = [now[k] for k in sorted(now.keys() - before.keys())]
        raise RunDirRefused(
            f"the sweep dir {sweep_dir} holds a sweep of other overrides (only there: {' '.join(there) or 'none'}; "
            f"only now: {' '.join(here) or 'none'}), and one study dir cannot hold both. Fix: give its own "
            f"overrides to resume it, or a new hydra.sweep.dir=PATH for this sweep.")


def check_output_dir(cfg: DictConfig, multirun: bool) -> None:
    """A hydra.run.dir (hydra.sweep.dir) given on the command line must be makeable before Hydra makes it. The
    default run dir is checked as it is chosen (alexnet.rundir.choose_run_dir)."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    raw = OmegaConf.to_container(cfg.hydra.sweep if multirun else cfg.hydra.run, resolve=False)["dir"]
    if "alexnet_run_dir" in str(raw):
        return
    try:
        path = OmegaConf.select(cfg, key)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key}={raw} cannot be resolved: {first_line(e)}. Fix: {key}=PATH.") from e
    check_can_make(Path(str(path)), key)


def _names(override: str, error: Exception) -> bool:
    """Whether `error` is about `override` (Hydra quotes the override, its key or its group/option)."""
    key, _, value = override.lstrip("+~").partition("=")
    text = f"{error} {getattr(error, 'missing_cfg_file', '') or ''}"
    return override in text or f"'{key}'" in text or f"{key}/{value}" in text or f"override {key}=" in text

