"""Requirement lists for scripts/download_wheels.sh (stdlib + packaging only).

  requirements.py --exclude-torch setup.cfg   the project's requirements (with `dev`), torch and torchvision left out
  requirements.py --torch-closure 3.12        names that installing torch and torchvision brings, for that Python,
                                              read from their installed metadata
  requirements.py --names FREEZE_FILE         the project names in a `pip freeze` output (or a list of names)
  requirements.py --drop NAMES_FILE DIR       delete DIR's wheels of the projects named in NAMES_FILE
"""
from __future__ import annotations

import configparser
import re
import sys
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pip vendors it
    from pip._vendor.packaging.requirements import Requirement

TORCH = ("torch", "torchvision")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(setup_cfg: Path) -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    lines = parser["options"]["install_requires"].splitlines() + parser["options.extras_require"]["dev"].splitlines()
    return [line.strip() for line in lines if line.strip() and normalize(Requirement(line).name) not in TORCH]


def torch_closure(python_version: str) -> set[str]:
    """Every distribution reached from torch and torchvision through requirements whose markers hold there."""
    environment = {"python_version": python_version, "python_full_version": f"{python_version}.0", "extra": ""}
    seen, todo = set(), list(TORCH)
    while todo:
        name = normalize(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            if name in TORCH:
                print(f"error: {name} is not installed here, so what it brings is unknown. Fix: pip install -e . "
                      f"first, then run this again.", file=sys.stderr)
                sys.exit(2)
            continue  # a requirement of another platform or Python
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(requirement.name)
    return seen


def names(freeze_file: Path) -> list[str]:
    """`name==1.0`, `name @ file://...`, `name` or `# comment` lines -> normalized names."""
    lines = [line.split("#")[0].strip() for line in freeze_file.read_text().splitlines()]
    return [normalize(re.split(r"[\s=<>!~;@\[]", line)[0]) for line in lines if line and not line.startswith("-")]


def drop(names_file: Path, folder: Path) -> None:
    names = set(names_file.read_text().split())
    for wheel in folder.glob("*.whl"):
        if normalize(wheel.name.split("-")[0]) in names:
            wheel.unlink()


if __name__ == "__main__":
    flag, *args = sys.argv[1:] or ["--help"]
    if len(args) != {"--exclude-torch": 1, "--torch-closure": 1, "--names": 1, "--drop": 2}.get(flag, len(args)):
        print(f"error: wrong arguments for {flag}. Fix: see `python scripts/requirements.py --help`.", file=sys.stderr)
        sys.exit(2)
    if flag == "--exclude-torch":
        print("\n".join(project_requirements(Path(args[0]))))
    elif flag == "--torch-closure":
        print("\n".join(sorted(torch_closure(args[0]))))
    elif flag == "--names":
        print("\n".join(names(Path(args[0]))))
    elif flag == "--drop":
        drop(Path(args[0]), Path(args[1]))
    else:
        print(__doc__)
        sys.exit(0 if flag in ("-h", "--help") else 2)
