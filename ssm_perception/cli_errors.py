"""The one place where `ssm-perception` turns a user's mistake into one line on stderr and exit code 2.

Every sub-command runs inside ``CliGroup.invoke``: a `UserError` (bad configuration, checkpoint, bag,
scenario, ...), a pydantic ValidationError, an OSError about a path the user gave, and click's usage
errors (a bad option value) become ``ssm-perception <command>: error: <one line>`` and exit code 2.
Anything else is a bug: one line and exit code 1 (set SSM_PERCEPTION_DEBUG=1 for the traceback).

The option validators below (``finite``, ``topic_name``, ...) are typer callbacks, so a bad value is
reported as a usage error naming the option, before the command starts.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import typer
from typer._click import (
    exceptions as click_exc,  # typer vendors click: its exception classes
)
from typer.core import TyperCommand, TyperGroup

from ssm_perception.config import UserError, one_line

DEBUG_ENV = "SSM_PERCEPTION_DEBUG"


class UsageProblem(UserError, ValueError):
    """A bad command-line value found by a command itself (not by an option callback)."""


def _say(where: str, message: str) -> None:
    typer.secho(f"{where}: error: {one_line(message, 600)}", fg="red", err=True)


class _UserErrors:
    """``invoke`` that maps user errors to one line + exit code 2 (see the module doc)."""

    def parse_args(self, ctx, args):
        """The command's own options (``ssm-perception --bogus``): a usage error is one line too."""
        try:
            return super().parse_args(ctx, args)
        except click_exc.NoArgsIsHelpError:
            raise
        except click_exc.ClickException as exc:
            _say(ctx.command_path, f"{exc.format_message()} (see --help)")
            raise typer.Exit(exc.exit_code) from None

    def invoke(self, ctx):
        from pydantic import ValidationError

        where = ctx.command_path
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click_exc.NoArgsIsHelpError):
            raise
        except click_exc.ClickException as exc:  # bad option values, unknown options or commands
            sub = getattr(exc, "ctx", None)
            _say(sub.command_path if sub is not None else where, f"{exc.format_message()} (see --help)")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except UserError as exc:
            _say(_sub_path(ctx, where), str(exc))
            raise typer.Exit(2) from None
        except ValidationError as exc:
            from ssm_perception.config import describe_validation_error

            _say(_sub_path(ctx, where), describe_validation_error(exc))
            raise typer.Exit(2) from None
        except OSError as exc:
            detail = exc.strerror or str(exc)
            path = exc.filename if exc.filename is not None else ""
            _say(_sub_path(ctx, where), f"{path}: {detail}" if path else detail)
            raise typer.Exit(2) from None
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            _say(_sub_path(ctx, where), f"internal error {type(exc).__name__}: {exc} "
                                        f"(a bug; {DEBUG_ENV}=1 shows the traceback)")
            raise typer.Exit(1) from None


class CliGroup(_UserErrors, TyperGroup):
    """The `ssm-perception` group: every sub-command runs inside the handler, option parsing included."""


class CliCommand(_UserErrors, TyperCommand):
    """A single-command app (``python -m ssm_perception.train.cli`` under torchrun): the same handler
    for the command's body (its own option parsing happens before, with typer's usage message)."""


def _sub_path(ctx, where: str) -> str:
    sub = ctx.invoked_subcommand
    return f"{where} {sub}" if sub else where


# ---------------------------------------------------------------------------------- option validators
def finite(gt: float | None = None, ge: float | None = None, le: float | None = None) -> Callable[[float], float]:
    """typer callback: a finite float within the bounds."""

    def check(value: float) -> float:
        if value is None:
            return value
        if not math.isfinite(value):
            raise typer.BadParameter(f"must be a finite number, got {value}")
        if gt is not None and not value > gt:
            raise typer.BadParameter(f"must be > {gt:g}, got {value:g}")
        if ge is not None and not value >= ge:
            raise typer.BadParameter(f"must be >= {ge:g}, got {value:g}")
        if le is not None and not value <= le:
            raise typer.BadParameter(f"must be <= {le:g}, got {value:g}")
        return value

    return check


def topic_name(value):
    """typer callback: a valid ROS 2 topic name (or a list of them); empty strings pass (= unset)."""
    from ssm_perception.config import topic_name_problem

    for name in [value] if isinstance(value, str) else list(value or ()):
        if name and (problem := topic_name_problem(name)):
            raise typer.BadParameter(f"not a ROS 2 topic name: {problem}")
    return value


def existing_path(value):
    """typer callback: an existing file or directory (empty strings pass = unset)."""
    if value and not Path(value).exists():
        raise typer.BadParameter(f"{value}: no such file or directory")
    return value
