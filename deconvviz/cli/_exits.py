"""How a command ends on an error: one line on stderr and an exit code (2 for bad input, 1 for a bug), never a
traceback unless --debug asks for it; and how a warning is shown: once, as one line `deconvviz: note: ...`. Apart
from `_app` so that the command modules can use it without a circle."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from contextlib import contextmanager

import typer
from typer.core import TyperGroup

from ..errors import DeconvvizError, out_of_memory


class _OneLineErrors(TyperGroup):
    """Usage errors (unknown option, bad value, extra argument) as one line and exit 2, like every other error."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            with _notes():
                code = super().main(args, prog_name, complete_var, False, **extra)
        except typer.Abort:
            typer.echo("deconvviz: error: interrupted", err=True)
            code = 130
        except Exception as e:  # click's exceptions, by name: typer carries its own click, which is private
            kinds = {c.__name__ for c in type(e).__mro__}
            if "NoArgsIsHelpError" in kinds:  # `deconvviz` alone: the help
                typer.echo(e.ctx.get_help())
                code = 0
            elif "UsageError" in kinds:
                where = e.ctx.command_path if getattr(e, "ctx", None) else "deconvviz"
                text = e.format_message().rstrip(".").replace("Value error, ", "")  # pydantic-style noise from typer
                typer.echo(f"deconvviz: error: {text}; see '{where} --help'", err=True)
                code = 2
            else:
                raise
        sys.exit(code or 0)


@contextmanager
def _notes():
    """Warnings from the libraries a command runs (those deconvviz causes and that tell the user nothing are
    silenced where they arise): each shown once, as one line on stderr, not Python's two lines with a source line.
    The filters are left as they are, so `-W error` and PYTHONWARNINGS still apply."""
    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split()) or category.__name__
        if text not in shown:
            shown.add(text)
            typer.echo(f"deconvviz: note: {text}", err=True)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def _fail(message: str, code: int) -> None:
    typer.echo(f"deconvviz: error: {message}", err=True)
    raise typer.Exit(code)


# The CLI option for each API argument an error can be about (DeconvvizError.about).
_FLAGS = {
    "layer": "--layer",
    "layers": "--layers",
    "class": "--class",
    "output": "--output",
    "pixels": "--pixels",
    "target": "--target-box",
    "activations": "--activations",
    "weights": "--weights",
    "model": "--model",
    "channels": "--channels",
    "region": "--region",
    "at": "--at",
    "exclude": "--exclude",
    "size": "--size",
    "out": "--out",
    "dpi": "--dpi",
    "top": "--top",
    "rule": "--rule",
    "unpool": "--unpool",
    "device": "--device",
    "stride": "--stride",
    "batch_size": "--batch-size",
    "workers": "--workers",
    "checkpoint_every": "--checkpoint-every",
    "per_position": "--per-position",
    "token": "--token",
    "max_memory": "--max-memory",
}


@contextmanager
def _errors(debug: bool):
    """DeconvvizError: one line, exit 2. Anything else: one line and exit 1 (traceback with --debug)."""

    try:
        yield
    except typer.Exit:
        raise
    except DeconvvizError as e:
        if debug:
            traceback.print_exc()
        flag = _FLAGS.get(getattr(e, "about", None))
        _fail(f"{flag}: {e}" if flag and not str(e).startswith(flag) else str(e), 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:  # output piped into a reader that stopped (`| head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    except Exception as e:  # noqa: BLE001 - the user gets one line, the traceback on request
        if debug:
            traceback.print_exc()
        first = str(e).splitlines()[0] if str(e) else ""
        if out_of_memory(e):
            _fail(f"out of memory ({type(e).__name__}: {first}); use a smaller --size, --top, --batch-size or --dpi", 2)
        _fail(f"internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)", 1)
