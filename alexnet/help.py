"""`alexnet-train --help`: what a user chooses, from the files themselves: each config group with its options and
the first line of each option's comment, the top-level fields, and example commands. Hydra's own help (every
internal group, the whole config) stays at `--hydra-help` and `--cfg job`."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from alexnet.config import CONF_DIR, EXPERIMENTS_DIR, Config

GROUPS = ("model", "data", "optimizer", "scheduler", "trainer", "budget", "debug")
EXAMPLES = """\
  alexnet-train debug=smoke data=synthetic model=alexnet_cifar   a smoke run in seconds
  alexnet-train optimizer=adam model.dropout=0.25                 any option or field
  alexnet-train -m model.dropout=0.0,0.5 model.lrn=true,false     a sweep: 4 runs, one W&B group and report
  alexnet-train -m +experiment=dropout                            a named study from experiments/
  alexnet-train --validate -m +experiment=dropout                 every check of every job, no training
  alexnet-train --cfg job model=alexnet_cifar                     the composed config, every key"""


def describe(path: Path, width: int = 78) -> str:
    """The first comment line of a YAML file that says something (not `@package`), cut at its first sentence."""
    for line in path.read_text().splitlines():
        text = line.lstrip("# ").strip()
        if line.startswith("#") and text and not text.startswith("@package"):
            text = re.split(r"\.\s+(?=[A-Z(])", text.removeprefix("Question: "))[0].rstrip(".")
            text = re.sub(r"^[\w+]+=\w+: ", "", text)  # "debug=smoke: a smoke run ..." says its name twice
            return text if len(text) <= width else text[:width - 1] + "…"
    return ""


def options(folder: Path) -> list[tuple[str, str]]:
    return [(p.stem, describe(p)) for p in sorted(folder.glob("*.yaml"))]


def text() -> str:
    lines = ["alexnet-train (python -m alexnet.run): train AlexNet variants on CIFAR-10, configured by Hydra,",
             "logged to W&B. Usage: alexnet-train [group=option] [key=value] ... [-m for a sweep]", ""]
    for group in (*GROUPS, "experiment"):
        folder = EXPERIMENTS_DIR if group == "experiment" else CONF_DIR / group
        lines.append(f"{'+experiment' if group == 'experiment' else group}=")
        lines += [f"  {name:<16}{about}" for name, about in options(folder)]
    fields = [f.name for f in dataclasses.fields(Config) if f.name not in (*GROUPS, "wandb")]
    lines += ["", f"Top-level fields: {', '.join(fields)}; wandb.* (mode, project, entity, group, tags, ...).",
              "Every key with its default: alexnet-train --cfg job. Hydra's own help: --hydra-help.", "",
              "Examples:", EXAMPLES]
    return "\n".join(lines)
