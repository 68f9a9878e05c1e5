"""A real sweep on synthetic data, then what researchers do with it: compare (report) and re-score (evaluate)."""
from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch

from alexnet.report import build_wandb_report
from conftest import TINY, run_cli
from wandb_records import offline_runs, read_run

SWEEP = [*TINY, "trainer.epochs=2", "trainer.limit_batches=12", "data.train_size=1500", "data.val_size=300",
         "data.test_size=300", "wandb.log_model=true", "wandb.sample_predictions=24", "model.dropout=0.0,0.5",
         "seed=0,1"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A real 4-job multirun: two dropout values x two seeds."""
    cwd = tmp_path_factory.mktemp("sweep")
    result = run_cli("run", ["-m", *SWEEP], cwd, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = cwd.glob("multirun/*/*")
    assert len(list(sweep_dir.glob("*/metrics.jsonl"))) == 4
    # the sweep's own report at its end (a failing callback is only a UserWarning to Hydra: look for its output)
    assert "model.dropout 0.0 vs 0.5: " in (sweep_dir / "report.md").read_text() and "UserWarning" not in result.stderr
    return sweep_dir


def jobs(sweep: Path) -> list[Path]:
    return sorted(d for d in sweep.iterdir() if (d / ".hydra").is_dir())


def summary_of(run_dir: Path) -> dict:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(line["_summary"] for line in lines if "_summary" in line)


def config_of(run_dir: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))


def report_table(report_md: Path) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in report_md.read_text().splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return split[0], split[2:]


@pytest.fixture(scope="module")
def report(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = run_cli("report", [str(sweep), "--out", str(out)], out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_report_has_one_row_per_configuration_with_mean_and_std(sweep, report):
    out, result = report
    header, rows = report_table(out / "report.md")
    assert header[:3] == ["model.dropout", "seeds", "val/acc (best)"]  # seed is averaged over, not a column
    assert len(rows) == 2 and sorted(r[0] for r in rows) == ["0.0", "0.5"]
    for row in rows:
        runs = [d for d in jobs(sweep) if config_of(d)["model"]["dropout"] == float(row[0])]
        assert len(runs) == 2 and row[1] == "2"
        for column, key in ((2, "val/best_acc"), (3, "test/acc")):
            values = [summary_of(d)[key] for d in runs]
            assert row[column] == f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"
        assert row[4] == "2" and row[7] == f"{summary_of(runs[0])['params']:,}"
    means = [float(r[3].split(" ")[0]) for r in rows]
    assert means == sorted(means, reverse=True)  # sorted by test accuracy
    assert "model.dropout" in result.stdout  # the table is printed too


def test_report_html_is_self_contained_with_the_plots(report):
    out, _ = report
    page = (out / "report.html").read_text()
    names = ("val_acc_vs_epoch.png", "val_acc_vs_time.png", "train_loss_vs_epoch.png", "test_acc_vs_model_dropout.png")
    assert page.count('src="data:image/png;base64,') == len(names)
    assert "<table>" in page and "http" not in page.split("<body>")[1]
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in (out / "report.md").read_text()


def test_wandb_runs_hold_names_groups_tables_and_artifacts(sweep):
    runs = [read_run(p) for d in jobs(sweep) for p in offline_runs(d)]
    assert len(runs) == 4 and len({r.run_id for r in runs}) == 4
    assert {r.group for r in runs} == {f"multirun/{sweep.parent.name}/{sweep.name}"}
    assert {r.job_type for r in runs} == {"train"} and all(r.exit_code == 0 for r in runs)
    assert {r.name.split(",")[-2:][0] + "," + r.name.split(",")[-1] for r in runs} == {
        f"model.dropout={d},seed={s}" for d in ("0.0", "0.5") for s in (0, 1)}
    for run in runs:
        logged = {k: v for row in run.history for k, v in row.items()}
        assert logged["test/predictions"]["_type"] == "table-file" and logged["test/predictions"]["nrows"] == 24
        # W&B stores a chart's data as a table under "<key>_table".
        assert logged["test/per_class_acc_table"]["_type"] == "table-file"
        assert logged["test/per_class_acc_table"]["nrows"] == 10  # one bar per class
        assert logged["test/confusion_matrix_table"]["nrows"] == 100  # (true, predicted) pairs of 10 classes
        (artifact,) = [a for a in run.artifacts if a["type"] == "model"]
        assert artifact["name"] == f"model-{run.run_id}" and "best" in artifact["aliases"]
        assert artifact["metadata"]["test/acc"] == pytest.approx(run.summary["test/acc"])
        assert artifact["metadata"]["config"]["model"]["dropout"] == run.config["model"]["dropout"]
        assert run.metrics["val/acc"] == {"step_metric": "epoch", "summary": ["max"]}
        assert run.metrics["val/*"]["step_metric"] == "epoch"
        best = max(h["val/acc"] for h in run.history if "val/acc" in h)
        assert run.summary["val/acc"] == {"max": pytest.approx(best)}  # the best, not the last
        assert run.summary["val/best_acc"] == pytest.approx(best)


def test_report_lists_unfinished_runs_and_reports_the_rest(sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    broken = jobs(copy)[0]
    lines = (broken / "metrics.jsonl").read_text().splitlines()
    (broken / "metrics.jsonl").write_text("\n".join(lines[:-2]) + "\n")  # killed before its summary
    result = run_cli("report", [str(copy)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{broken} (unfinished)" in result.stderr
    header, rows = report_table(copy / "report.md")
    assert sorted(r[1] for r in rows) == ["1", "2"]  # one configuration lost a seed
    assert "(unfinished)" in (copy / "report.html").read_text()


def test_report_says_when_nothing_varies(sweep, tmp_path):
    same = [d for d in jobs(sweep) if config_of(d)["model"]["dropout"] == 0.5]
    result = run_cli("report", [*map(str, same), "--out", str(tmp_path / "out")], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Nothing varies between these runs but the seed" in result.stderr
    _, rows = report_table(tmp_path / "out" / "report.md")
    assert len(rows) == 1 and rows[0][0] == "2"


@pytest.mark.parametrize("args,message", [
    (["empty"], "no runs found in empty"),
    (["nowhere"], "nowhere does not exist"),
    ([], "give a multirun dir or run dirs"),
    (["--wandb", "me/alexnet"], "--wandb needs ENTITY/PROJECT and --group GROUP"),
])
def test_report_errors(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    result = run_cli("report", args, tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_wandb_report_object_has_the_comparison_panels():
    from wandb_workspaces.expr import expr_to_filters

    answers = ["model.dropout 0.0 vs 0.5 with model.lrn=False: +1.0 points test accuracy (...)", "Baselines: ..."]
    report = build_wandb_report("me", "alexnet", "multirun/2026-11-25/12-00-00", ["model.dropout", "model.lrn"],
                                answers)
    assert (report.entity, report.project) == ("me", "alexnet")
    assert [type(b).__name__ for b in report.blocks] == ["H1", "P", "UnorderedList", "P", "PanelGrid"]
    assert report.blocks[2].items == answers[:1] and report.blocks[3].text == answers[1]  # the answer first
    grid = report.blocks[-1]
    (runset,) = grid.runsets
    parsed = expr_to_filters(runset.filters)
    assert parsed.op == "AND" and {(f.key.name, f.value) for f in parsed.filters} == {
        ("group", "multirun/2026-11-25/12-00-00"), ("jobType", "train")}
    assert runset.groupby == ["config.model.dropout", "config.model.lrn"]  # curves per configuration
    val, val_time, loss, bar, parallel, table = grid.panels
    assert (val.x, val.y, val.groupby_aggfunc, val.groupby_rangefunc) == ("epoch", ["val/acc"], "mean", "minmax")
    assert (val_time.x, loss.y) == ("train/elapsed", ["train/loss_epoch"]) and bar.metrics == ["test/acc"]
    assert [c.metric.name for c in parallel.columns] == ["model.dropout", "model.lrn", "test/acc"]
    assert table.diff_only is True


def test_evaluate_rescores_a_checkpoint_as_an_eval_run(sweep, tmp_path):
    job = jobs(sweep)[0]
    result = run_cli("evaluate", [f"ckpt={job / 'checkpoints' / 'best.pt'}", "trainer.device=cpu",
                                  "wandb.mode=offline"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"test accuracy {summary_of(job)['test/acc']:.4f} (300 images)" in result.stdout
    assert "per-class accuracy" in result.stdout and "confusion matrix" in result.stdout
    (eval_dir,) = tmp_path.glob("outputs/eval/*/*")
    (path,) = offline_runs(eval_dir)
    run = read_run(path)
    train_run = read_run(offline_runs(job)[0])
    assert run.job_type == "eval" and run.group == train_run.group and run.name == f"eval:{train_run.name}"
    assert run.summary["test/acc"] == pytest.approx(summary_of(job)["test/acc"])
    results = json.loads((eval_dir / "test_results.json").read_text())
    assert sum(map(sum, results["confusion_matrix"])) == 300


def test_evaluate_with_changed_data(sweep, tmp_path):
    job = jobs(sweep)[0]
    result = run_cli("evaluate", [f"ckpt={job / 'checkpoints' / 'best.pt'}", "data.test_size=100",
                                  "model.dropout=0.9", "wandb.mode=disabled"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(100 images)" in result.stdout  # the checkpoint's data, with the override on top
    assert "warning: model overrides are ignored" in result.stderr


def flipped_byte_checkpoint(path):
    from alexnet.checkpoint import save_checkpoint

    save_checkpoint(path, {"model": {"w": torch.arange(1000.0)}, "config": {"model": {}}})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor's bytes: torch.load still reads it
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("make,ckpt,message", [
    (lambda p: None, "bad.pt", "does not exist"),
    (lambda p: p.write_bytes(b"not a checkpoint"), "bad.pt", "is unreadable (truncated or not a checkpoint"),
    (lambda p: p.parent.joinpath("run", "checkpoints").mkdir(parents=True), ".",
     "is a directory. Fix: pass a checkpoint file, e.g. ckpt=<run dir>/checkpoints/best.pt"),
    (flipped_byte_checkpoint, "bad.pt", "is corrupt: its content does not match its SHA-256 digest"),
    (lambda p: None, None, "no checkpoint to score. Fix: pass ckpt=PATH"),
])
def test_evaluate_errors(tmp_path, make, ckpt, message):
    make(tmp_path / "bad.pt")
    args = [f"ckpt={tmp_path / ckpt}"] if ckpt else []
    result = run_cli("evaluate", [*args, "wandb.mode=disabled"], tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_fields_that_come_with_a_group_option_are_not_factors():
    from alexnet.report import RunRecord, varied_keys

    def run(name, lr, momentum, dropout):
        return RunRecord("r", {"optimizer.name": name, "optimizer.lr": lr, "optimizer.momentum": momentum,
                               "model.dropout": dropout, "seed": 0, "wandb.project": "p"}, "finished")

    # optimizer=sgd,adam with model.dropout swept: momentum and lr come with the option
    runs = [run("sgd", 0.01, 0.9, d) for d in (0.0, 0.5)] + [run("adam", 0.001, None, d) for d in (0.0, 0.5)]
    assert varied_keys(runs) == ["model.dropout", "optimizer.name"]
    # ... but a field swept within one option is a factor of its own
    runs.append(run("sgd", 0.1, 0.9, 0.0))
    assert varied_keys(runs) == ["model.dropout", "optimizer.lr", "optimizer.name"]


def test_settings_that_change_nothing_trained_are_not_factors():
    """Runs given their own data caches (as scripts/fast_cifar_levers.sh does), log rates or checkpoint
    settings are one configuration; the first such report listed data.cache_dir as a factor."""
    from alexnet.report import RunRecord, varied_keys

    def run(cache, every, dropout):
        return RunRecord("r", {"data.cache_dir": cache, "trainer.log_every_n_steps": every, "model.dropout": dropout,
                               "trainer.save_checkpoints": every > 5, "seed": 0}, "finished")

    assert varied_keys([run("/a", 1, 0.0), run("/b", 10, 0.0), run("/c", 10, 0.5)]) == ["model.dropout"]


# --- effect sizes ---------------------------------------------------------------------------------------------
def test_the_welch_interval_and_p_value_match_a_hand_computation():
    """Welch (1947) by hand: the standard error, the Welch-Satterthwaite degrees of freedom, the t quantile."""
    import math

    from scipy.stats import t

    from alexnet.effects import welch

    a, b = [0.70, 0.72, 0.71], [0.66, 0.67, 0.69]
    va, vb = statistics.variance(a) / 3, statistics.variance(b) / 3  # 0.0001 / 3 and 0.000233 / 3
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    assert df == pytest.approx(3.448, abs=1e-3)
    difference = 0.71 - statistics.fmean(b)
    got = welch(a, b)
    assert got[0] == pytest.approx(difference)
    assert got[1:3] == pytest.approx((difference - t.ppf(0.975, df) * se, difference + t.ppf(0.975, df) * se))
    assert got[3] == pytest.approx(2 * t.sf(difference / se, df))
    assert welch([0.7], [0.6, 0.65])[1:] == (None, None, None)  # one seed: no spread, no interval


def test_an_effect_reads_as_a_sentence():
    from alexnet.effects import Effect

    assert Effect("model.dropout", 0.5, 0.0, 3, 3, 0.041, 0.020, 0.062, 0.004).sentence() == (
        "model.dropout 0.5 vs 0.0: +4.1 points test accuracy (95% CI +2.0 to +6.2, 3 seeds each, Welch p = 0.004)")
    assert Effect("model.lrn", True, False, 1, 1, -0.012, None, None, None).sentence() == (
        "model.lrn True vs False: -1.2 points test accuracy (no interval: 1 seed each, and one seed has no spread)")


def test_baselines_come_from_the_flag_the_config_or_the_first_level():
    from alexnet.effects import baseline_level

    assert baseline_level("model.dropout", [0.0, 0.5], {"model.dropout": 0.5}, {}) == (0.5, "the config's default")
    assert baseline_level("model.dropout", [0.0, 0.5], {"model.dropout": 0.5}, {"model.dropout": "0.0"})[0] == 0.0
    assert baseline_level("model.input_size", [32, 64], {"model.input_size": 224}, {}) == (
        32, "the first value; the config's default, 224, is not among them")


def test_the_report_opens_with_each_effect_and_its_interval(sweep, report):
    """On the real 4-job sweep: dropout 0.0 against the config's 0.5, two seeds each, the numbers recomputed."""
    from alexnet.effects import welch

    out, result = report
    by_dropout = {d: [summary_of(j)["test/acc"] for j in jobs(sweep) if config_of(j)["model"]["dropout"] == d]
                  for d in (0.0, 0.5)}
    difference, low, high, p = welch(by_dropout[0.0], by_dropout[0.5])
    line = (f"model.dropout 0.0 vs 0.5: {100 * difference:+.1f} points test accuracy (95% CI {100 * low:+.1f} to "
            f"{100 * high:+.1f}, 2 seeds each, Welch p = {p:.2g})")
    assert f"- {line}" in (out / "report.md").read_text().split("| model.dropout")[0]  # before the table
    assert line in result.stdout and "Baselines: model.dropout: 0.5 (the config's default)" in result.stdout
    assert line in (out / "report.html").read_text()


@pytest.mark.parametrize("baseline,message", [
    ("model.lrn=true", "model.lrn does not vary between these runs. Fix: a key that varies: model.dropout"),
    ("model.dropout=0.3", "no run has model.dropout=0.3. Fix: one of 0.0, 0.5"),
    ("model.dropout", "--baseline takes KEY=VALUE"),
])
def test_a_baseline_that_is_not_in_the_runs_is_refused(sweep, tmp_path, baseline, message):
    result = run_cli("report", [str(sweep), "--out", str(tmp_path / "r"), "--baseline", baseline], tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "r").exists()


def test_a_chosen_baseline_turns_the_comparison_around(sweep, tmp_path):
    result = run_cli("report", [str(sweep), "--out", str(tmp_path), "--baseline", "model.dropout=0.0",
                                "--title", "Dropout on synthetic data"], tmp_path)
    assert result.returncode == 0 and "model.dropout 0.5 vs 0.0: " in result.stdout
    assert (tmp_path / "report.md").read_text().startswith("# Dropout on synthetic data\n")
    assert "model.dropout: 0.0 (--baseline)" in result.stdout


def test_with_two_factors_each_level_is_compared_at_the_same_values_of_the_other():
    """Pooling dropout over optimizers whose accuracies differ by 60 points would bury dropout's effect."""
    from alexnet.effects import MAX_LEVELS, effects
    from alexnet.report import RunRecord

    def run(optimizer, dropout, acc):
        return RunRecord("r", {"optimizer.name": optimizer, "model.dropout": dropout}, "finished", {"test/acc": acc})

    runs = [run("adam", 0.0, a) for a in (0.90, 0.905)] + [run("adam", 0.5, a) for a in (0.95, 0.955)]
    runs += [run("sgd", 0.0, a) for a in (0.30, 0.305)] + [run("sgd", 0.5, a) for a in (0.35, 0.355)]
    found, baselines = effects(runs, ["model.dropout", "optimizer.name"],
                               {"model.dropout": 0.5, "optimizer.name": "sgd"})
    dropout = [e for e in found if e.key == "model.dropout"]
    assert [(e.given, round(e.difference, 6), e.n) for e in dropout] == [
        ((("optimizer.name", "adam"),), -0.05, 2), ((("optimizer.name", "sgd"),), -0.05, 2)]
    assert all(e.high < 0 for e in dropout)  # pooled over the optimizers, the interval would straddle zero
    from alexnet.effects import welch
    assert welch([0.90, 0.905, 0.30, 0.305], [0.95, 0.955, 0.35, 0.355])[2] > 0
    assert baselines == {"model.dropout": (0.5, "the config's default"), "optimizer.name": ("sgd", "the config's default")}
    assert dropout[0].sentence().startswith("model.dropout 0.0 vs 0.5 with optimizer.name=adam: -5.0 points")
    search = [run("sgd", d / 100, 0.5) for d in range(MAX_LEVELS + 1)]
    assert effects(search, ["model.dropout"], {})[0] == []  # a search: the table and plots answer it


def test_a_25_configuration_sweep_stays_readable(tmp_path):
    """A 5 x 5 grid with 2 seeds: the table cut to the top 10 in report.md (all 25 in the HTML), the effect lines
    cut too, curves per configuration (not per run) with the legend beside the axes, a parallel-coordinates view."""
    from PIL import Image

    from alexnet.report import TOP, write_report

    runs = grid_runs()
    result = write_report(runs, tmp_path, "grid")
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    table_rows = [line for line in md.splitlines() if line.startswith("| 0.")]
    assert len(table_rows) == TOP and "The top 10 of 25 configurations; report.html lists them all." in md
    assert page.count("<tr>") == 26 and len(result["rows"]) == 25
    assert "- ... and 30 more in report.html" in md  # 40 effect lines: 2 keys x 4 levels x 5 values of the other
    names = sorted(p.name for p in result["plots"])
    assert names == ["parallel_coordinates.png", "test_acc_vs_model_dropout.png", "test_acc_vs_optimizer_lr.png",
                     "train_loss_vs_epoch.png", "val_acc_vs_epoch.png", "val_acc_vs_time.png"]
    width, height = Image.open(tmp_path / "val_acc_vs_epoch.png").size
    assert width > 1.4 * height  # the 25-entry legend beside the axes widens the figure instead of covering it


def grid_runs(levels: int = 5) -> list:
    from alexnet.report import RunRecord

    runs = []
    for i, lr in enumerate((0.001, 0.003, 0.01, 0.03, 0.1)[:levels]):
        for j, dropout in enumerate((0.0, 0.25, 0.5, 0.6, 0.75)[:levels]):
            for seed in (0, 1):
                acc = 0.5 + 0.05 * i - 0.02 * j + 0.01 * seed
                epochs = [{"epoch": e, "val/acc": acc * e / 5, "train/loss_epoch": 2 - acc * e / 5,
                           "train/elapsed": 10.0 * e + seed} for e in range(1, 6)]
                runs.append(RunRecord(f"r{i}{j}{seed}", {"optimizer.lr": lr, "model.dropout": dropout, "seed": seed,
                                                         "data.name": "synthetic", "model.arch": "alexnet_cifar"},
                                      "finished", {"test/acc": acc, "val/best_acc": acc, "epochs": 5}, epochs))
    return runs


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (Debian: apt install chromium)")
def test_report_html_renders_in_a_real_browser_at_laptop_width(tmp_path):
    """Headless Chromium at 1366 px: the page draws its title, table and plots two to a row, nothing wider than
    the window."""
    import subprocess

    from PIL import Image

    from alexnet.report import write_report

    write_report(grid_runs(), tmp_path, "grid")
    shot = tmp_path / "page.png"
    subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1366,3000", f"--screenshot={shot}", (tmp_path / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    page = Image.open(shot).convert("L")
    assert page.size == (1366, 3000)
    ink = [sum(1 for x in range(0, 1366, 4) if page.getpixel((x, y)) < 128) for y in range(0, 3000, 4)]
    assert sum(ink[:15]) > 20  # the title, at the top
    drawn_rows = [i for i, n in enumerate(ink) if n]
    assert drawn_rows[-1] * 4 > 1500  # the table and the plots below it rendered, not a blank page

    def side_by_side(top: int) -> bool:  # ink left and right of a blank gutter down the middle, 200 px high
        band = range(top, top + 200, 2)
        gutter = all(page.getpixel((x, y)) > 200 for x in range(676, 692, 2) for y in band)
        left = sum(page.getpixel((x, y)) < 128 for x in range(40, 640, 6) for y in band)
        right = sum(page.getpixel((x, y)) < 128 for x in range(730, 1330, 6) for y in band)
        return gutter and left > 50 and right > 50

    assert any(side_by_side(top) for top in range(600, 2800, 50))  # the plots two to a row


def test_a_baseline_is_read_as_hydra_reads_a_value():
    from alexnet.effects import same_level, welch

    assert same_level(True, "true") and same_level(0.0, "0") and same_level(0.5, "0.50") and same_level(0.001, "1e-3")
    assert same_level(None, "null") and same_level("adam", "adam") and not same_level(0.5, "0.25")
    assert not same_level(1, "true")  # a bool is not a number here
    assert welch([0.7, 0.7], [0.6, 0.6]) == pytest.approx((0.1, None, None, None))  # no spread: no interval


def test_a_baseline_given_twice_is_refused(sweep, tmp_path):
    result = run_cli("report", [str(sweep), "--out", str(tmp_path / "r"), "--baseline", "model.dropout=0.0",
                                "--baseline", "model.dropout=0.5"], tmp_path)
    assert result.returncode == 2 and "--baseline model.dropout is given twice" in result.stderr


def test_a_label_opens_the_setup_line_of_the_report_and_of_every_figure(tmp_path, monkeypatch):
    from alexnet import report

    captions = []
    real_save = report._save
    monkeypatch.setattr(report, "_save", lambda fig, ax, path, caption="", **kw: (
        captions.append(caption), real_save(fig, ax, path, caption, **kw))[1])
    report.write_report(grid_runs(2), tmp_path, "grid", label="CIFAR-10, JPEG q75 copy")
    assert "Setup: CIFAR-10, JPEG q75 copy | " in (tmp_path / "report.md").read_text()
    assert captions and all(c.startswith("CIFAR-10, JPEG q75 copy | ") for c in captions)
