"""``--help`` pages that read the same for every command: metavars, panels, an epilog.

typer (0.29) shows each option's Python type as its metavar (``<str>``, ``<bool>``,
``<list[Path]>``) and an argument as ``{model}``. ``add_command`` registers a command
through a ``TyperCommand`` subclass that, once click has built the parameters, gives each
one without an explicit metavar a plain one: nothing for a flag, ``N`` for an integer,
``X`` for a float, ``PATH`` for a path, ``TEXT`` for a string, and an argument its name
in capitals (``MODEL``, ``MODEL...``), and the usage line shows it so (typer writes a
required argument ``{MODEL}``). ``panels`` (title → parameter names) sorts the options
into rich help panels, so the command's declarations stay untouched: a parameter in no
panel stays under "Options"; ``--help`` joins ``--json`` (or "Options" where ``--json`` is
in no panel). The epilog lists examples and the exit codes.

Usage, in a command module's ``register``::

    add_command(app, "inspect", inspect_command,
                panels={"Calibration": ("calib", "batch_size")},
                examples=("dsp-deploy inspect model.onnx --calib calib.npz",))
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

__all__ = ["EXIT_CODES", "NO_CHECK_EXIT_CODES", "Group", "add_command", "epilog", "reflow", "tidy"]

EXIT_CODES: Mapping[int, str] = MappingProxyType(
    {
        0: "done",
        1: "a check failed (nothing written)",
        2: "bad input: a file, an option or an output path",
        130: "interrupted (143 terminated, 129 hung up)",
    }
)
# A command that runs no check that can fail (no exit 1): bench, eval, inspect, ...
NO_CHECK_EXIT_CODES: Mapping[int, str] = MappingProxyType(
    {code: text for code, text in EXIT_CODES.items() if code != 1}
)
_JSON = frozenset({"as_json", "json"})
_TYPE_METAVARS = {int: "N", float: "X", Path: "PATH", str: "TEXT"}
# Parameters named alike across commands read alike: every model argument is MODEL.
_NAME_METAVARS = {
    "model": "MODEL",
    "models": "MODEL...",
    "calib": "NPZ",
    "calib_out": "NPZ",
    "eval_file": "NPZ",
    "output": "PATH",
    "dataset": "NAME|PATH",
    "plot": "PNG",
}


def _metavar(param: Any) -> str:
    if getattr(param, "is_flag", False):
        return ""
    if param.param_type_name == "argument":  # typer adds the "..." of nargs=-1 itself
        return _NAME_METAVARS.get(param.name, param.name.upper()).removesuffix("...")
    if param.name in _NAME_METAVARS:
        return _NAME_METAVARS[param.name]
    annotation = param.type_descriptor.annotation
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    return _TYPE_METAVARS.get(annotation, "VALUE")


def _no_type(ctx: Any) -> None:
    """An argument's type column: empty (its metavar already names it)."""


def tidy(params: list[Any], panels: Mapping[str, Sequence[str]] | None = None) -> None:
    """Give each parameter a plain metavar (unless it has one) and its panel, and order
    ``params`` panel by panel (arguments and unpanelled options first), as shown."""
    titles = list(panels or {})
    panel_of = {name: title for title, names in (panels or {}).items() for name in names}
    for param in params:
        if param.metavar is None:
            param.metavar = _metavar(param)
        if param.param_type_name == "argument":
            param.display_type_rich = _no_type
        if param.name in panel_of:
            param.rich_help_panel = panel_of[param.name]
    params.sort(key=lambda p: titles.index(p.rich_help_panel) + 1 if p.name in panel_of else 0)


def _usage_pieces(param: Any, ctx: Any) -> list[str]:
    """An argument as ``MODEL``, ``[MODEL]`` or ``MODEL...`` (not typer's ``{MODEL}``)."""
    if param.param_type_name != "argument":
        return list(param.get_usage_pieces(ctx))
    name = param.metavar if param.required else f"[{param.metavar}]"
    return [name + ("..." if param.nargs != 1 else "")]


def _flag_help(option: Any, panel: str | None = None) -> Any:
    """The ``--help`` option without a type, at the end of ``panel``."""
    if option is not None:
        option.metavar = ""
        option.rich_help_panel = panel
    return option


def _help_panel(panels: Mapping[str, Sequence[str]] | None) -> str | None:
    """The panel that holds ``json`` (the output options), else the plain "Options"."""
    titles = (title for title, names in (panels or {}).items() if _JSON & set(names))
    return next(titles, None)


def _command_class(panels: Mapping[str, Sequence[str]] | None) -> type[TyperCommand]:
    help_panel = _help_panel(panels)

    class Command(TyperCommand):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            tidy(self.params, panels)

        def get_help_option(self, ctx: Any) -> Any:
            return _flag_help(super().get_help_option(ctx), help_panel)

        def collect_usage_pieces(self, ctx: Any) -> list[str]:
            pieces = [self.options_metavar] if self.options_metavar else []
            return pieces + [p for param in self.get_params(ctx) for p in _usage_pieces(param, ctx)]

    return Command


class Group(TyperGroup):
    """The root group, with the same plain metavars as its commands."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tidy(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        return _flag_help(super().get_help_option(ctx))


def epilog(examples: Sequence[str] = (), exits: Mapping[int, str] = EXIT_CODES) -> str:
    """ "Examples:" and "Exit codes:" paragraphs, one line each (rich keeps single breaks)."""
    parts = []
    if examples:
        parts.append("\n".join(["[bold]Examples[/bold]", *(f"  {e}" for e in examples)]))
    codes = [f"  {c:<3}  {w}" for c, w in exits.items()]
    parts.append("\n".join(["[bold]Exit codes[/bold]", *codes]))
    return "\n\n".join(parts)


def reflow(doc: str | None) -> str | None:
    """A docstring's paragraphs each as one line, so rich wraps them to the terminal."""
    if doc is None:
        return None
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def add_command(
    app: typer.Typer,
    name: str,
    function: Callable[..., Any],
    *,
    panels: Mapping[str, Sequence[str]] | None = None,
    examples: Sequence[str] = (),
    exits: Mapping[int, str] = EXIT_CODES,
) -> None:
    """``app.command(name)(function)`` with plain metavars, ``panels`` and the epilog."""
    cls = _command_class(panels)
    text = reflow(function.__doc__)
    app.command(name, cls=cls, help=text, epilog=epilog(examples, exits))(function)
