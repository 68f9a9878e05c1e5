"""`python -m alexnet.report PATH...` / `--wandb ENTITY/PROJECT --group GROUP`: compare the runs of a sweep.

Finds the runs, works out which config values vary between them, and writes a table (one row per
configuration, mean +- std over seeds) and plots as report.md, a self-contained report.html and PNGs. Offline it
reads each run dir's local record (.hydra/config.yaml and metrics.jsonl), so it needs no W&B; with --wandb it
reads the runs from the server and also saves a W&B Report with the same comparison.
"""
from __future__ import annotations

from alexnet.errors import quiet_ctrl_c_while_starting

quiet_ctrl_c_while_starting(__name__)  # before the heavy imports below

import argparse
import base64
import html
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from alexnet.config import flatten
from alexnet.effects import MAX_LEVELS, effects, level_order, same_level
from alexnet.errors import UserError, contract
from alexnet.rundir import metrics_rows

# Seeds are what rows average over; the rest change nothing trained (where data is cached, how often a run logs
# or checkpoints, W&B settings), so runs that differ only in them are one configuration.
IGNORED = ("seed", "wandb.", "data.cache_dir", "data.download", "trainer.log_every_n_steps",
           "trainer.checkpoint_every_n_steps", "trainer.save_checkpoints", "trainer.resume", "fail_fast")
# The key naming each group's option: fields that come with an option vary with it but are not factors.
OPTION_KEYS = {"model": "model.arch", "data": "data.name", "optimizer": "optimizer.name",
               "scheduler": "scheduler.name"}


class ReportError(UserError):
    """Nothing to report; the message says why and what to pass instead."""


@dataclass
class RunRecord:
    name: str
    config: dict  # flattened: {"model.dropout": 0.5, ...}
    status: str  # finished | failed | unfinished | unreadable ...: why
    summary: dict = field(default_factory=dict)
    epochs: list = field(default_factory=list)  # one dict per epoch: epoch, val/acc, train/images_per_sec, ...
    runtime: float | None = None  # seconds


# ------------------------------------------------------------------------------------------ finding runs

def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Run dirs (holding .hydra/config.yaml) at or below each path."""
    found = []
    for path in paths:
        candidates = [path] if (path / ".hydra" / "config.yaml").is_file() else sorted(
            p.parent.parent for p in path.rglob("config.yaml") if p.parent.name == ".hydra")
        found += [d for d in candidates if d not in found]
    return found


def load_local_runs(paths: list[Path]) -> list[RunRecord]:
    """The training runs at or below `paths` (evaluation runs, whose config names a `ckpt`, left out)."""
    return [run for run in map(load_local_run, find_run_dirs(paths)) if "ckpt" not in run.config]


def load_local_run(run_dir: Path) -> RunRecord:
    from omegaconf import OmegaConf

    try:
        config = flatten(OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=True))
    except Exception as e:  # one damaged record leaves that run out (and says so), not the whole report
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        return RunRecord(name=str(run_dir), config={}, status=f"unreadable .hydra/config.yaml: {reason}")
    record = RunRecord(name=str(run_dir), config=config, status="unfinished")
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        record.status = "failed"  # stopped before training: a config or data error
        return record
    for row in metrics_rows(run_dir):
        if "_summary" in row:
            record.summary = row["_summary"]
        elif "_exit" in row:  # 130: stopped by Ctrl-C or a signal, resumable from its checkpoint
            record.status = ("finished" if row["_exit"] == 0 and record.summary
                             else "interrupted" if row["_exit"] == 130 else "failed")
        elif "val/acc" in row:
            record.epochs.append(row)
        if "_runtime" in row:
            record.runtime = row["_runtime"]
    return record


def load_wandb_runs(path: str, group: str) -> list[RunRecord]:
    import wandb

    records = []
    for run in wandb.Api().runs(path, filters={"group": group}):
        if run.job_type == "eval":
            continue
        status = {"finished": "finished", "running": "unfinished"}.get(run.state, "failed")
        by_epoch = {row["epoch"]: row for row in run.scan_history(keys=["epoch", "val/acc", "train/images_per_sec"])}
        # the time and loss curves, where the run logged them (a scan returns only rows holding all its keys)
        for row in run.scan_history(keys=["epoch", "train/elapsed", "train/loss_epoch"]):
            by_epoch.get(row["epoch"], {}).update(row)
        history = list(by_epoch.values())
        summary = {k: v for k, v in run.summary.items() if not k.startswith("_")}
        records.append(RunRecord(run.name, flatten(dict(run.config)), status, summary, history,
                                 run.summary.get("_runtime")))
    return records


# ------------------------------------------------------------------------------------------- comparison

def varied_keys(runs: list[RunRecord]) -> list[str]:
    """Config keys whose values differ between runs, less those fixed by a varied group option.

    Sweeping `optimizer=sgd,adam` varies momentum, betas, eps, ... too; only `optimizer.name` is the factor,
    unless a field also varies among runs of the same option (a swept `optimizer.lr`, say).
    """
    keys = sorted({k for r in runs for k in r.config})
    varied = [k for k in keys if not k.startswith(IGNORED) and len({repr(r.config.get(k)) for r in runs}) > 1]
    for group, option in OPTION_KEYS.items():
        if option not in varied:
            continue
        for key in [k for k in varied if k.startswith(f"{group}.") and k != option]:
            value_per_option: dict = {}
            if all(value_per_option.setdefault(repr(r.config.get(option)), repr(r.config.get(key))) ==
                   repr(r.config.get(key)) for r in runs):
                varied.remove(key)
    return varied


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass
class Row:
    values: dict  # varied key -> value
    runs: list
    seeds: int
    val_acc: tuple
    test_acc: tuple
    epochs: int
    wall_time: float | None
    images_per_sec: float | None
    params: int | None


def compare(runs: list[RunRecord], keys: list[str]) -> list[Row]:
    """One row per distinct configuration, mean +- std over its runs (seeds), sorted by test accuracy."""
    by_config: dict[tuple, list[RunRecord]] = {}
    for run in runs:
        by_config.setdefault(tuple(repr(run.config.get(k)) for k in keys), []).append(run)
    rows = []
    for group in by_config.values():
        speeds = [statistics.fmean(e["train/images_per_sec"] for e in r.epochs if "train/images_per_sec" in e)
                  for r in group if any("train/images_per_sec" in e for e in r.epochs)]
        times = [r.runtime for r in group if r.runtime is not None]
        rows.append(Row(
            values={k: group[0].config.get(k) for k in keys}, runs=group, seeds=len({r.config.get("seed") for r in group}),
            val_acc=mean_std([r.summary["val/best_acc"] for r in group]),
            test_acc=mean_std([r.summary["test/acc"] for r in group]),
            epochs=max(int(r.summary.get("epochs", len(r.epochs))) for r in group),
            wall_time=statistics.fmean(times) if times else None,
            images_per_sec=statistics.fmean(speeds) if speeds else None,
            params=group[0].summary.get("params")))
    return sorted(rows, key=lambda row: row.test_acc[0], reverse=True)


def _pm(mean_and_std: tuple, seeds: int) -> str:
    mean, std = mean_and_std
    return f"{mean:.4f} ± {std:.4f}" if seeds > 1 else f"{mean:.4f}"


def table(rows: list[Row], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    header = [*keys, "seeds", "val/acc (best)", "test/acc", "epochs", "wall time (s)", "images/s", "params"]
    body = [[str(row.values[k]) for k in keys] + [
        str(row.seeds), _pm(row.val_acc, len(row.runs)), _pm(row.test_acc, len(row.runs)), str(row.epochs),
        f"{row.wall_time:.0f}" if row.wall_time is not None else "-",
        f"{row.images_per_sec:.0f}" if row.images_per_sec is not None else "-",
        f"{row.params:,}" if row.params is not None else "-"] for row in rows]
    return header, body


# ------------------------------------------------------------------------------------------------ plots

def _label(row: Row, keys: list[str]) -> str:
    return ", ".join(f"{k}={row.values[k]}" for k in keys) or "all runs"


def _figure(size: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def _save(fig, ax, path: Path, caption: str = "", legend_outside: bool = False) -> Path:
    """Grid, legend (beside the axes when it is long), and the runs' setup as a caption under every figure, so
    that a figure copied out of its report still says what was trained."""
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        if legend_outside:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
        else:
            ax.legend(fontsize=8)
    if caption:
        ax.annotate(caption, (0, 0), xycoords="figure fraction", xytext=(4, 4), textcoords="offset points",
                    fontsize=7, color="dimgrey")
    fig.tight_layout(rect=(0, 0.03 if caption else 0, 1, 1))
    fig.savefig(path, dpi=110, bbox_inches="tight" if legend_outside else None)
    plt.close(fig)
    return path


LABELS = {"val/acc": "validation accuracy", "train/loss_epoch": "training loss"}


def setup_caption(runs: list[RunRecord]) -> str:
    """What every run shares that decides what a figure means: data, model, width, epochs, precision."""
    def shared(key: str):
        values = {repr(r.config.get(key)) for r in runs}
        return runs[0].config.get(key) if len(values) == 1 else None

    data = shared("data.name")
    if data == "imagefolder" and shared("data.root"):
        data = f"imagefolder {Path(str(shared('data.root'))).name}"
    parts = [f"data: {data}" if data else None,
             f"{shared('model.arch')}" + (f" width {shared('model.width')}" if shared("model.width") else "")
             if shared("model.arch") else None,
             f"{shared('trainer.epochs')} epochs" if shared("trainer.epochs") else None,
             f"{shared('trainer.precision')}" if shared("trainer.precision") not in (None, "auto") else None,
             (lambda n: f"{n} seed{'s' if n > 1 else ''}")(len({r.config.get("seed") for r in runs}))]
    return " | ".join(p for p in parts if p)


CURVES = [  # (file stem, y key, x key, title): per configuration, the mean over seeds with a min-max band
    ("val_acc_vs_epoch", "val/acc", "epoch", "Validation accuracy"),
    ("val_acc_vs_time", "val/acc", "train/elapsed", "Validation accuracy against seconds of training"),
    ("train_loss_vs_epoch", "train/loss_epoch", "epoch", "Training loss"),
]


def mean_curve(runs: list[RunRecord], y: str, x: str) -> tuple[list, list, list, list]:
    """(x, mean y, min y, max y) over the runs at each epoch that every run reached and logged; x is the mean
    over runs (seconds of training differ between seeds)."""
    per_epoch = [{e["epoch"]: e for e in run.epochs if y in e and x in e} for run in runs]
    epochs = sorted(set.intersection(*(set(p) for p in per_epoch))) if per_epoch else []
    xs = [statistics.fmean(p[n][x] for p in per_epoch) for n in epochs]
    ys = [[p[n][y] for p in per_epoch] for n in epochs]
    return xs, [statistics.fmean(v) for v in ys], [min(v) for v in ys], [max(v) for v in ys]


def plot_curves(rows: list[Row], keys: list[str], y: str, x: str, title: str, path: Path, caption: str = "") -> Path:
    """One colour per configuration (tab20: 20 stay apart; the legend sits outside the axes), the mean over
    its seeds as a line, their range as a band."""
    import matplotlib
    import matplotlib.ticker

    fig, ax = _figure((9, 4.8) if len(rows) > 6 else (7, 4.5))
    colours = matplotlib.colormaps["tab20" if len(rows) > 10 else "tab10"]
    for i, row in enumerate(rows):
        xs, mean, low, high = mean_curve(row.runs, y, x)
        colour = colours(i % colours.N)
        seeds = f" ({len(row.runs)} seeds)" if len(row.runs) > 1 else ""
        ax.plot(xs, mean, color=colour, marker="o" if len(xs) <= 30 else None, markersize=3,
                label=_label(row, keys) + seeds)
        if len(row.runs) > 1:
            ax.fill_between(xs, low, high, color=colour, alpha=0.18, linewidth=0)
    ax.set(xlabel="epoch" if x == "epoch" else "seconds of training", ylabel=LABELS.get(y, y), title=title)
    if x == "epoch":
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    return _save(fig, ax, path, caption, legend_outside=len(rows) > 6)  # a long legend beside, not over, the curves


def plot_test_acc(rows: list[Row], key: str, keys: list[str], path: Path, caption: str = "") -> Path:
    """Final test accuracy of every run against one varied value, with the mean per value: one series per
    combination of the other varied values (pooled over them, a mean between two far-apart groups describes
    neither)."""
    import matplotlib

    others = [k for k in keys if k != key]
    series: dict = {}
    for row in rows:
        points = series.setdefault(tuple(row.values[k] for k in others), {})
        points.setdefault(row.values[key], []).extend(run.summary["test/acc"] for run in row.runs)
    order = sorted({v for points in series.values() for v in points}, key=level_order)
    numeric = all(level_order(v)[0] == 0 for v in order)
    position = {v: (v if numeric else i) for i, v in enumerate(order)}
    fig, ax = _figure((6.5, 4))
    colours = matplotlib.colormaps["tab10" if len(series) <= 10 else "tab20"]
    for i, (other_values, points) in enumerate(sorted(series.items(), key=lambda item: str(item[0]))):
        colour = colours(i % colours.N) if others else "tab:blue"
        values = [v for v in order if v in points]
        for value in values:
            ax.scatter([position[value]] * len(points[value]), points[value], color=colour, alpha=0.5, s=18)
        # A line joins means of numeric values only: between categories it would suggest a trend.
        label = ", ".join(f"{k}={v}" for k, v in zip(others, other_values)) + " (mean)" if others else "mean"
        ax.plot([position[v] for v in values], [statistics.fmean(points[v]) for v in values], color=colour,
                marker="D", markersize=5, label=label, linestyle="-" if numeric else "none")
    if not numeric:
        ax.set_xticks(range(len(order)), [str(v) for v in order])
        ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set(xlabel=key, ylabel="test accuracy", title=f"Test accuracy against {key}")
    return _save(fig, ax, path, caption, legend_outside=len(series) > 4)


def plot_parallel(rows: list[Row], keys: list[str], path: Path, caption: str = "") -> Path:
    """A search's view: one line per configuration across an axis per varied value and test accuracy, coloured
    by test accuracy. Each axis is scaled to its own range (text values in sorted order)."""
    import matplotlib

    axes = [*keys, "test/acc"]
    columns = [[row.values[k] for row in rows] for k in keys] + [[row.test_acc[0] for row in rows]]
    scaled, ticks = [], []
    for column in columns:
        levels = sorted(set(column), key=level_order)
        numeric = all(level_order(v)[0] == 0 for v in levels)
        log = numeric and min(levels) > 0 and max(levels) / min(levels) >= 20  # a learning rate's decades
        low, high = (min(levels), max(levels)) if numeric else (0, max(len(levels) - 1, 1))
        position = (math.log10 if log else (lambda v: v)) if numeric else levels.index
        if log:
            low, high = math.log10(low), math.log10(high)
        span = (high - low) or 1
        scaled.append([(position(v) - low) / span for v in column])
        ticks.append((f"{min(levels):.3g}", f"{max(levels):.3g}" + (" (log)" if log else "")) if numeric
                     else (str(levels[0]), str(levels[-1])))
    fig, ax = _figure((max(6, 2 * len(axes)), 4.5))
    accs = columns[-1]
    norm = matplotlib.colors.Normalize(min(accs), max(accs))
    for i in sorted(range(len(rows)), key=lambda i: accs[i]):  # the best drawn last, on top
        ax.plot(range(len(axes)), [col[i] for col in scaled], color=matplotlib.colormaps["viridis"](norm(accs[i])),
                alpha=0.8)
    for j, (low, high) in enumerate(ticks):
        ax.axvline(j, color="grey", linewidth=0.8)
        ax.annotate(low, (j, 0), xytext=(3, -12), textcoords="offset points", fontsize=7)
        ax.annotate(high, (j, 1), xytext=(3, 4), textcoords="offset points", fontsize=7)
    ax.set_xticks(range(len(axes)), axes)
    ax.set_yticks([])
    ax.set_title("Configurations across the varied values (colour: test accuracy)")
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax, label="test accuracy")
    return _save(fig, ax, path, caption)


# ---------------------------------------------------------------------------------------------- writing

TOP = 10  # rows of a large sweep's table in report.md; report.html has them all

def config_defaults() -> dict:
    """The config's own value of every key (`python -m alexnet.run` with no overrides): each factor's baseline
    unless --baseline names another."""
    from omegaconf import OmegaConf

    from alexnet.config import compose

    return flatten(OmegaConf.to_container(compose([]), resolve=True))


def effect_lines(runs: list[RunRecord], keys: list[str], baseline: dict | None) -> list[str]:
    """The answer first, in plain words: each level of each varied value against its baseline."""
    for key, value in (baseline or {}).items():
        if key not in keys:
            raise ReportError(f"--baseline {key}={value}: {key} does not vary between these runs. Fix: a key "
                              f"that varies: {', '.join(keys) or 'none does (the runs differ in seed only)'}.")
        levels = {r.config.get(key) for r in runs}
        if not any(same_level(level, value) for level in levels):
            raise ReportError(f"--baseline {key}={value}: no run has {key}={value}. Fix: one of "
                              f"{', '.join(sorted(map(str, levels)))}.")
        if len(levels) > MAX_LEVELS:
            raise ReportError(f"--baseline {key}={value}: {key} has {len(levels)} values, a search; its table and "
                              f"plots answer it, not pairwise lines (at most {MAX_LEVELS} values). Fix: drop it.")
    found, baselines = effects(runs, keys, config_defaults(), baseline)
    lines = [effect.sentence() for effect in found]
    sources = "; ".join(f"{key}: {value} ({source})" for key, (value, source) in baselines.items())
    if lines:
        lines.append(f"Baselines: {sources}. Differences of mean test accuracy over the seeds of each side"
                     + ("; each level against the baseline at the same values of the other varied keys."
                        if len(keys) > 1 else "."))
    return lines


def write_report(runs: list[RunRecord], out: Path, title: str, baseline: dict | None = None,
                 label: str | None = None) -> dict:
    """Write report.md, report.html and the plot PNGs into `out`; returns what it wrote and found. `label`
    ("CIFAR-10, JPEG q75 copy") opens the setup line under every figure."""
    finished = [r for r in runs if r.status == "finished"]
    skipped = [r for r in runs if r.status != "finished"]
    if not finished:
        raise ReportError(f"none of the {len(runs)} runs finished: " + "; ".join(
            f"{r.name} ({r.status})" for r in skipped) + ". Fix: finish or re-run them, then report again.")
    keys = varied_keys(finished)
    rows = compare(finished, keys)
    answers = effect_lines(finished, keys, baseline)  # refuses a --baseline the runs lack before writing
    out.mkdir(parents=True, exist_ok=True)
    caption = " | ".join(p for p in (label, setup_caption(finished)) if p)
    plots = [plot_curves(rows, keys, y, x, title, out / f"{stem}.png", caption) for stem, y, x, title in CURVES
             if any(y in e and x in e for r in finished for e in r.epochs)]
    plots += [plot_test_acc(rows, key, keys, out / f"test_acc_vs_{key.replace('.', '_')}.png", caption)
              for key in keys]
    if len(rows) > TOP and keys:  # a search
        plots.append(plot_parallel(rows, keys, out / "parallel_coordinates.png", caption))
    header, body = table(rows, keys)
    notes = []
    if not keys:
        notes.append("Nothing varies between these runs but the seed: one row, averaged over seeds.")
    if skipped:
        notes.append("Left out (not finished): " + "; ".join(f"{r.name} ({r.status})" for r in skipped))

    md = [f"# {title}", "", f"{len(finished)} finished runs, {len(rows)} configurations; varied: "
          f"{', '.join(keys) or 'nothing'}. Mean ± std over seeds; sorted by test accuracy. Setup: {caption}.", ""]
    if answers:
        effects_shown = answers[:-1][:TOP]
        more = len(answers) - 1 - len(effects_shown)
        md += [*[f"- {line}" for line in effects_shown], *([f"- ... and {more} more in report.html"] if more else []),
               "", answers[-1], ""]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(cells) + " |" for cells in body[:TOP]]
    if len(body) > TOP:
        md += ["", f"The top {TOP} of {len(body)} configurations; report.html lists them all."]
    md += ["", *[f"> {n}" for n in notes], "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    (out / "report.md").write_text("\n".join(md))

    def embedded(p: Path) -> str:
        return f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'

    cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}img{width:49%;display:inline-block;vertical-align:top;margin:1em 0}"
            "@media (max-width:900px){img{width:100%}}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(md[2])}</p>"
            + (f"<ul>{''.join(f'<li>{html.escape(a)}</li>' for a in answers[:-1])}</ul>"
               f"<p><small>{html.escape(answers[-1])}</small></p>" if answers else "") + "<table><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in header) + f"</tr>{cells}</table>"
            + "".join(f"<p><em>{html.escape(n)}</em></p>" for n in notes)
            + "".join(embedded(p) for p in plots) + "</body></html>")
    (out / "report.html").write_text(page)
    return {"rows": rows, "keys": keys, "plots": plots, "skipped": skipped, "notes": notes, "effects": answers}


def build_wandb_report(entity: str, project: str, group: str, keys: list[str], answers: list[str] = ()):
    """A W&B Report with the local report's content: the effect lines, curves per configuration (the runs
    grouped by the varied values: mean line, min-max band), test accuracy per configuration, a table of the
    runs' differing config values, and test accuracy across the varied values."""
    import wandb_workspaces.reports.v2 as wr

    runset = wr.Runset(entity=entity, project=project, name=group, filters=f"Group = '{group}' and JobType = 'train'",
                       groupby=[f"config.{k}" for k in keys])
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k)) for k in keys]
    columns.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric("test/acc")))
    grouped = {"groupby_aggfunc": "mean", "groupby_rangefunc": "minmax"}
    panels = [wr.LinePlot(title="Validation accuracy", x="epoch", y=["val/acc"], **grouped),
              wr.LinePlot(title="Validation accuracy against seconds of training", x="train/elapsed", y=["val/acc"],
                          **grouped),
              wr.LinePlot(title="Training loss", x="epoch", y=["train/loss_epoch"], **grouped),
              wr.BarPlot(title="Final test accuracy", metrics=["test/acc"], orientation="h"),
              wr.ParallelCoordinatesPlot(title="Test accuracy against the varied values", columns=columns),
              wr.RunComparer(diff_only=True)]
    effects = [wr.UnorderedList(list(answers[:-1])), wr.P(answers[-1])] if answers else []
    return wr.Report(entity=entity, project=project, title=f"Comparison: {group}",
                     description=f"Runs of group {group}; varied: {', '.join(keys) or 'nothing'}.",
                     blocks=[wr.H1(f"Comparison: {group}"),
                             wr.P(f"Varied: {', '.join(keys) or 'nothing but the seed'}."), *effects,
                             wr.PanelGrid(runsets=[runset], panels=panels)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alexnet.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="a multirun dir, or run dirs")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from a W&B server instead")
    parser.add_argument("--group", help="with --wandb: the W&B group of the sweep")
    parser.add_argument("--out", type=Path, help="where to write the report (default: the first PATH)")
    parser.add_argument("--title", help="the report's heading (default: Comparison of PATH)")
    parser.add_argument("--label", help="what the data is, opening the setup line under every figure and in the "
                                        "report (e.g. 'CIFAR-10, JPEG q75 copy')")
    parser.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE",
                        help="the level of a varied value that the others are compared with (default: the "
                             "config's own value); repeat for several keys")
    args = parser.parse_args(argv)
    with contract(interrupted="interrupted (Ctrl-C): the report may be incomplete; run the same command again"):
        malformed = [b for b in args.baseline if "=" not in b]
        if malformed:
            raise ReportError(f"--baseline takes KEY=VALUE, e.g. --baseline model.dropout=0.0 (got "
                              f"{', '.join(malformed)})")
        pairs = [b.split("=", 1) for b in args.baseline]
        baseline, named = dict(pairs), [k for k, _ in pairs]
        repeated = sorted({k for k in named if named.count(k) > 1})
        if repeated:
            raise ReportError(f"--baseline {repeated[0]} is given twice. Fix: one baseline per key.")
        if args.wandb:
            if not args.group or args.wandb.count("/") != 1:
                raise ReportError("--wandb needs ENTITY/PROJECT and --group GROUP, e.g. "
                                  "--wandb me/alexnet --group multirun/2026-11-25/12-00-00")
            runs = load_wandb_runs(args.wandb, args.group)
            where = f"{args.wandb} group {args.group}"
            out = args.out or Path("reports") / args.group.replace("/", "_").replace(":", "_")
        else:
            if not args.paths:
                raise ReportError("give a multirun dir or run dirs (PATH...), or --wandb ENTITY/PROJECT --group G")
            missing = [p for p in args.paths if not p.exists()]
            if missing:
                raise ReportError(f"{', '.join(map(str, missing))} does not exist. Fix: pass a multirun dir "
                                  f"(multirun/<date>/<time>) or run dirs (outputs/<date>/<time>).")
            runs = load_local_runs(args.paths)
            where = ", ".join(map(str, args.paths))
            out = args.out or args.paths[0]
        if not runs:
            raise ReportError(f"no runs found in {where}. Fix: pass a multirun dir (multirun/<date>/<time>) or run "
                              f"dirs; a run dir holds .hydra/config.yaml and metrics.jsonl.")
        try:
            result = write_report(runs, out, args.title or f"Comparison of {where}", baseline, args.label)
        except OSError as e:
            raise ReportError(f"cannot write the report to {out}: {e.strerror or e}. Fix: --out DIR, a folder you "
                              f"can write to.") from e
        for note in result["notes"]:
            print(f"note: {note}", file=sys.stderr)
        if result["effects"]:
            print("\n".join(result["effects"]))
        header, body = table(result["rows"], result["keys"])
        print(" | ".join(header))
        print("\n".join(" | ".join(cells) for cells in body))
        print(f"report: {out / 'report.md'}, {out / 'report.html'} ({len(result['plots'])} plots)")
        if args.wandb:
            entity, project = args.wandb.split("/")
            report = build_wandb_report(entity, project, args.group, result["keys"], result["effects"])
            report.save()
            print(f"W&B report: {report.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
