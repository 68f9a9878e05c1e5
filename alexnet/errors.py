"""The error contract of every command (alexnet.run, evaluate, report, summary, bench), kept in one place.

- A problem the user can fix (a `UserError`, or a config Hydra or OmegaConf refuses): one `error:` line naming
  the problem and the fix on stderr, exit code 2, no traceback.
- Ctrl-C outside training (start-up, evaluation, a report): one line, exit code 130. During training the first
  Ctrl-C checkpoints and stops cleanly (alexnet/signals.py); a second one stops at once, also without a traceback.
- Anything else is a bug: its traceback and exit code 1, as Python gives them.

`HYDRA_FULL_ERROR=1` keeps every traceback. Hydra's own error report (exit 1) is bypassed while a command runs,
so that an error raised inside Hydra (a run dir that cannot be made) reaches `contract` too.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd command


class UserError(Exception):
    """A problem the user can fix (config, data, files): reported as one message, without a traceback."""


class ConfigError(UserError, ValueError):
    """A value outside what its key allows."""


class RunDirRefused(UserError):
    """The run dir holds another run (or another process writes it): this run was refused, that one untouched."""


class StopNow(KeyboardInterrupt):
    """A second Ctrl-C during training: stop at once, saying what is left (the message)."""


def first_line(error: BaseException) -> str:
    """An exception's first line, or its type's name when it has no message (EOFError())."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def yaml_problem(error: BaseException) -> str:
    """Our message for a YAML file that does not parse: the problem, the file and the line."""
    where = getattr(error, "problem_mark", None)
    return (f"a config file is not valid YAML: {getattr(error, 'problem', None) or first_line(error)}"
            f"{f' in {where.name}, line {where.line + 1}' if where else ''}. Fix that file.")


def user_error_in(error: BaseException) -> UserError | None:
    """Our error, when `error` is one or wraps one (OmegaConf wraps what a resolver raises)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def message_of(error: BaseException) -> str | None:
    """The contract's message for `error`, or None when it is not the user's to fix (a bug)."""
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    ours = user_error_in(error)
    if ours is not None:
        return str(ours)
    if isinstance(error, MissingConfigException) and error.options:  # `model=resnet`: name the options
        from alexnet.overrides import explain

        return explain(error, "", [])
    if type(error).__module__.startswith("yaml"):  # a user's config file that is not YAML (hydra.searchpath)
        return yaml_problem(error)
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        message, cause = str(error), error.__cause__
        while cause is not None:  # Hydra wraps the informative OmegaConf error
            message, cause = f"{message}\n{cause}", cause.__cause__
        return message
    return None


def missing_folders(path) -> list:
    """`path` and those of its parents that do not exist yet, deepest first: what making `path` creates."""
    from pathlib import Path

    path = Path(path).absolute()
    return [p for p in (path, *path.parents) if not p.exists()]


def remove_if_empty(folders: list) -> None:
    """Undo `missing_folders`' making after a failure, so that nothing is left half-made: each folder, deepest
    first, if it is empty (one that holds anything, or that another process filled meanwhile, stays)."""
    for folder in folders:
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def exit_at_once_on_ctrl_c() -> None:
    """From here on a Ctrl-C ends the process at once (exit 130), without a traceback from the shutdown."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: os._exit(INTERRUPTED))


_USER_FULL_ERROR: list[str | None] = []  # HYDRA_FULL_ERROR as the user set it, while a contract runs


def _interrupted_while_starting(signum, frame) -> None:
    os.write(2, b"error: interrupted (Ctrl-C) while starting: nothing was done\n")
    os._exit(INTERRUPTED)


def quiet_ctrl_c_while_starting(module: str) -> None:
    """Called first by a command's module (`__main__`): a Ctrl-C while the heavy imports run (torch, Hydra: a
    second or two) ends with one line, not a traceback through them. `contract` takes over from there."""
    if module == "__main__" and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupted_while_starting)


@contextlib.contextmanager
def contract(interrupted: str = "interrupted (Ctrl-C)") -> Iterator[None]:
    """Run a command under the contract (see the module doc). `interrupted` is the line a Ctrl-C prints.
    Contracts nest (Hydra's task function has its own, so that Hydra adds nothing to our message)."""
    outermost = not _USER_FULL_ERROR
    if signal.getsignal(signal.SIGINT) is _interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises KeyboardInterrupt again
    user_set = os.environ.get("HYDRA_FULL_ERROR") if outermost else _USER_FULL_ERROR[0]
    _USER_FULL_ERROR.append(user_set)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its report and exiting 1
    try:
        yield
    except KeyboardInterrupt as e:
        if user_set == "1":
            raise
        exit_at_once_on_ctrl_c()  # while W&B and the like shut down
        print(f"error: {e}" if isinstance(e, StopNow) and str(e) else f"error: {interrupted}", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except Exception as e:
        message = None if user_set == "1" else message_of(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    finally:
        _USER_FULL_ERROR.pop()
        if outermost and user_set is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        elif outermost:
            os.environ["HYDRA_FULL_ERROR"] = user_set
