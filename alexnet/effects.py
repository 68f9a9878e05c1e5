"""Effect sizes for a report: each level of a varied config value against a baseline level, in test accuracy.

The difference of mean test accuracy (level minus baseline) over the runs (seeds) of each side, with a 95%
confidence interval and a p-value from Welch's t-test (unequal variances; Student's t distribution with the
Welch-Satterthwaite degrees of freedom, right for the 2 to 5 seeds a study has). With one run on a side there is
no spread to estimate, so no interval: the effect says so. Where several values vary, each level is compared with
the baseline at the same values of the others (pooling over a factor with a large effect of its own would swamp
the interval), one line per combination. A value with more than MAX_LEVELS levels (a search) gets no lines.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Effect:
    key: str
    level: object
    baseline: object
    n: int  # runs (seeds) at the level
    n_baseline: int
    difference: float  # mean test accuracy at the level minus at the baseline, as a fraction
    low: float | None  # the 95% interval of the difference; None with a single run on either side
    high: float | None
    p: float | None  # Welch's two-sided p-value; None as for the interval
    given: tuple = ()  # ((other key, its value), ...): where the comparison was made, when others vary too

    def sentence(self) -> str:
        """`model.dropout 0.5 vs 0.0: +4.1 points test accuracy (95% CI +2.0 to +6.2, 3 seeds each)`."""
        seeds = (f"{self.n} seed{'s' if self.n > 1 else ''} each" if self.n == self.n_baseline
                 else f"{self.n} and {self.n_baseline} seeds")
        if self.low is None:
            why = "one seed has no spread" if min(self.n, self.n_baseline) == 1 else "they did not differ at all"
            spread = f"no interval: {seeds}, and {why}"
        else:
            spread = f"95% CI {points(self.low)} to {points(self.high)}, {seeds}, Welch p = {self.p:.2g}"
        where = " with " + ", ".join(f"{k}={v}" for k, v in self.given) if self.given else ""
        return (f"{self.key} {self.level} vs {self.baseline}{where}: {points(self.difference)} points test accuracy "
                f"({spread})")


def points(fraction: float) -> str:
    """An accuracy difference in percentage points, signed: +4.1."""
    return f"{100 * fraction:+.1f}"


def welch(level: list[float], baseline: list[float], confidence: float = 0.95) -> tuple[float, float | None,
                                                                                     float | None, float | None]:
    """(difference of means, interval low, high, two-sided p) of `level` minus `baseline`."""
    difference = statistics.fmean(level) - statistics.fmean(baseline)
    if len(level) < 2 or len(baseline) < 2:
        return difference, None, None, None
    va, vb = statistics.variance(level) / len(level), statistics.variance(baseline) / len(baseline)
    if va + vb == 0:  # identical values on both sides (a deterministic run repeated): no spread to scale by
        return difference, None, None, None
    result = stats.ttest_ind(level, baseline, equal_var=False)
    interval = result.confidence_interval(confidence)
    return difference, float(interval.low), float(interval.high), float(result.pvalue)


def same_level(level, text: str) -> bool:
    """Whether a value typed on the command line (--baseline model.dropout=0, data.hflip=true, lr=1e-3) names
    `level`: read as Hydra reads an override's value, numbers compared as numbers."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        value = OverridesParser.create().parse_override(f"k={text}").value()
    except Exception:  # noqa: BLE001 - not Hydra syntax: compare as text
        value = text
    if isinstance(level, bool) or isinstance(value, bool):
        return level is value
    if isinstance(level, (int, float)) and isinstance(value, (int, float)):
        return math.isclose(level, value, rel_tol=1e-9)
    return level == value or str(level) == str(text)


def baseline_level(key: str, levels: list, defaults: dict, chosen: dict) -> tuple[object, str]:
    """The level others are compared with, and where it came from: --baseline, the config's default, or (when
    the default is not among the levels) the first level."""
    if key in chosen:
        match = [v for v in levels if same_level(v, chosen[key])]
        if match:
            return match[0], "--baseline"
    default = defaults.get(key)
    if any(v == default for v in levels):
        return next(v for v in levels if v == default), "the config's default"
    return levels[0], f"the first value; the config's default, {'null' if default is None else default}, is not " \
                      f"among them"


MAX_LEVELS = 10  # more levels than this is a search: its table and plots answer, not pairwise lines


def effects(runs: list, keys: list[str], defaults: dict, chosen: dict | None = None) -> tuple[list[Effect], dict]:
    """Every level of every varied key against its baseline, in test accuracy, at each combination of the other
    keys' values; and each key's baseline with its source. `runs`: records with `.config` (flat) and
    `.summary["test/acc"]`."""
    found, baselines = [], {}
    for key in keys:
        levels = sorted({run.config.get(key) for run in runs}, key=level_order)
        if len(levels) > MAX_LEVELS:
            continue
        base, source = baseline_level(key, levels, defaults, chosen or {})
        baselines[key] = (base, source)
        others = [k for k in keys if k != key]
        strata: dict = {}
        for run in runs:
            stratum = strata.setdefault(tuple(run.config.get(k) for k in others), {})
            stratum.setdefault(run.config.get(key), []).append(run.summary["test/acc"])
        for values in sorted(strata, key=lambda t: tuple(map(level_order, t))):
            by_level = strata[values]
            if base not in by_level:
                continue
            for level in (v for v in levels if v in by_level and v != base):
                difference, low, high, p = welch(by_level[level], by_level[base])
                found.append(Effect(key, level, base, len(by_level[level]), len(by_level[base]), difference, low,
                                    high, p, tuple(zip(others, values))))
    return found, baselines


def level_order(value) -> tuple:
    """Numbers in numeric order before anything else in text order (None last)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        return (0, value, "")
    return (1 if value is not None else 2, 0, str(value))
