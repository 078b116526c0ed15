"""What every CLI command shares: -v/-q, quiet libraries, and how failures end.

    exit 0    done
    exit 1    a user error (bad file, input, option value, package, machine): one message, no traceback
    exit 2    a usage error (unknown option, missing argument): Click's message
    exit 130  interrupted (Ctrl-C); 143 for SIGTERM (cli.main)

Library warnings (torch, transformers, ONNX Runtime) are shown only with -v; -vv adds debug logs.
"""

from __future__ import annotations

import errno
import functools
import os
import sys

import click

# Top-level modules of the compiler's libraries -> the extra that installs them.
EXTRA_OF = {"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "tensorrt_lean": "lean", "cuda": "lean"}
COMPILER_MODULES = ("torch", "onnx", "onnx_graphsurgeon", "onnxscript", "polygraphy", "transformers", "yaml", "rich",
                    "tokenizers", "safetensors")
# OSErrors that are about the user's files or machine, not a bug.
USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR,
                  errno.EISDIR, errno.ENAMETOOLONG, errno.EEXIST, errno.ENOTEMPTY, errno.EXDEV, errno.EMFILE}


def verbosity() -> int:
    """-1 quiet, 0 normal, 1 verbose, 2 debug (of the command now running)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("trtcompile.verbosity", 0) if ctx is not None else 0


def progress():
    """The Progress display for this command (silent with -q)."""
    from trtcompile.progress import Progress

    return Progress(quiet=verbosity() < 0)


def quiet_libraries(level: int) -> None:
    """Library chatter off unless -v: Python warnings, transformers' logging, ONNX Runtime's log."""
    import logging
    import warnings

    if level >= 1:
        logging.basicConfig(level=logging.DEBUG if level >= 2 else logging.INFO, format="%(name)s: %(message)s")
        return
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for name in ("torch", "torch.onnx", "onnxscript", "transformers", "polygraphy", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "onnxruntime" in sys.modules:
        sys.modules["onnxruntime"].set_default_logger_severity(3)
    else:  # set it as soon as a command imports onnxruntime, without importing it for those that do not
        sys.meta_path.insert(0, _OrtQuieter())


class _OrtQuieter:
    """An import hook that lowers ONNX Runtime's default log level right after its first import."""

    def find_spec(self, name, path=None, target=None):
        if name != "onnxruntime":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_quiet(module):
            exec_module(module)
            try:
                module.set_default_logger_severity(3)
            except AttributeError:
                pass

        spec.loader.exec_module = exec_and_quiet
        return spec


def missing_dependency(exc: ImportError) -> str | None:
    """For an ImportError of one of our optional libraries: the message saying which extra installs it."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if not name:
        return None
    extra = EXTRA_OF.get(name) or ("compiler" if name in COMPILER_MODULES else None)
    if extra is None:
        return None
    command = click.get_current_context(silent=True)
    what = f"`trtcompile {command.info_name}`" if command is not None else "this"
    return (f"{what} needs the Python package {name!r}, which this installation lacks (it has the runtime "
            f"only?)\n  fix: install the '{extra}' extra: pip install \".[{extra}]\" in a checkout of trtcompile "
            f"(or pip install \"trtcompile[{extra}] @ file:///path/to/trtcompile\")")


_terminated = False


def exit_on_sigterm() -> None:
    """A SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so a half-written package is removed, and
    the process exits 143 whatever error the unwinding surfaced on its way out (a signal inside a
    C extension's import comes back as an ImportError)."""
    import signal

    def on_sigterm(*_):
        global _terminated
        _terminated = True
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_sigterm)


def fail(message: str, code: int = 1):
    if _terminated:  # the error is the signal's echo, not the user's to fix
        click.secho("terminated", fg="red", err=True)
        sys.exit(143)
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def user_errors(fn):
    """Turn the failures a user can fix into one message and an exit code (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return handled(*args, **kwargs)
        except BaseException as exc:
            if _terminated and not (isinstance(exc, SystemExit) and exc.code == 143):
                click.secho("terminated", fg="red", err=True)
                sys.exit(143)
            raise

    def handled(*args, **kwargs):
        from trtcompile.errors import UserError
        from trtcompile.runtime import InputError, PackageError

        try:
            return fn(*args, **kwargs)
        except (UserError, PackageError, InputError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            click.secho("interrupted", fg="red", err=True)
            sys.exit(130)
        except ImportError as exc:
            message = missing_dependency(exc)
            if message is None:
                raise
            fail(message)
        except OSError as exc:
            if exc.errno not in USER_OS_ERRORS:
                raise
            where = f" {exc.filename!r}" if exc.filename else ""
            fail(f"{exc.strerror or exc}{':' if where else ''}{where}"
                 + ("\n  fix: free some space, or write the output elsewhere (-o)" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                    else "\n  fix: check the path and its permissions"))
    return wrapper


def command_options(fn):
    """-v/--verbose and -q/--quiet, then user_errors: what every `trtcompile` command carries."""

    @click.option("-v", "--verbose", count=True, help="Show library warnings and progress logs (-vv: debug).")
    @click.option("-q", "--quiet", is_flag=True, help="Print only results and errors.")
    @functools.wraps(fn)
    def wrapper(*args, verbose: int = 0, quiet: bool = False, **kwargs):
        level = -1 if quiet else verbose
        ctx = click.get_current_context()
        ctx.meta["trtcompile.verbosity"] = level
        quiet_libraries(level)
        return fn(*args, **kwargs)

    return user_errors(wrapper)
