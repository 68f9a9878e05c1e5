"""The installed commands (`alexnet-train`, `alexnet-evaluate`, ...): each is `python -m alexnet.<module>`.

This module imports nothing heavy, so a Ctrl-C while a command imports torch and Hydra ends with one line (see
alexnet/errors.py), as it does under `python -m`.
"""
from __future__ import annotations

import importlib
import sys

from alexnet.errors import quiet_ctrl_c_while_starting


def _run(module: str) -> None:
    quiet_ctrl_c_while_starting("__main__")
    main = importlib.import_module(f"alexnet.{module}").main
    if module == "summary":  # its main raises (tests call it): the contract is the command's, as under -m
        from alexnet.errors import contract

        with contract():
            main(sys.argv[1:])
    elif module == "report":
        sys.exit(main(sys.argv[1:]))
    else:  # run, evaluate, bench read sys.argv themselves
        main()


def train() -> None:
    _run("run")


def evaluate() -> None:
    _run("evaluate")


def report() -> None:
    _run("report")


def summary() -> None:
    _run("summary")


def bench() -> None:
    _run("bench")
