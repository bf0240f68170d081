"""Options declared once: a dataclass field carries its flag, help, default and validation, and the command
line's parameters are built from the fields (as litgpt builds a subcommand from a function's signature).

A field made with :func:`option` is a command-line option; ``choices``, ``minimum``, ``above`` and ``within`` in
its :class:`Flag` validate a value (:func:`validate`, for the command line and the Python API alike), and
``parse`` turns what the command line gives (a string, a list of ``key=value``) into the field's value.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Any

import typer

from longattn_cmd.errors import UserError


@dataclasses.dataclass(frozen=True)
class Flag:
    """How one field appears on the command line."""

    help: str
    flags: tuple[str, ...] = ()  # e.g. ("--model", "-m"); empty: --field-name (and --no-... for a bool)
    cli_type: Any = (
        None  # what the command line passes when it is not the field's type (e.g. str for lengths)
    )
    parse: Callable[[Any], Any] | None = None  # command-line value -> field value
    choices: tuple[str, ...] | None = None
    minimum: float | None = None  # smallest valid value (None values are left alone)
    above: float | None = None  # values must be greater than this
    within: tuple[float, float] | None = None  # values must lie in [low, high)
    argument: bool = False  # a positional argument rather than an option
    quick: Any = None  # the quick sweep's value, where it differs (benchmark only)


def option(default: Any = None, help: str = "", *flags: str, factory: Callable | None = None, **cli: Any):
    """A dataclass field that is also a command-line option (see :class:`Flag` for ``cli``)."""
    meta = {"cli": Flag(help, tuple(flags), **cli)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field: dataclasses.Field) -> str:
    """The option's long flag, as a user writes it."""
    flags = field.metadata["cli"].flags
    return next((f for f in flags if f.startswith("--")), "--" + field.name.replace("_", "-"))


def default_of(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def validate(options: Any) -> None:
    """Check every declared field of ``options`` against its declaration; a :class:`UserError` names the
    flag, the bad value and what would be valid."""
    for field in dataclasses.fields(options):
        meta = field.metadata.get("cli")
        value = getattr(options, field.name)
        if meta is None or value is None:
            continue
        name = flag_name(field)
        if meta.choices is not None and value not in meta.choices:
            what = name.lstrip("-").replace("-", " ")
            raise UserError(f"unknown {what} {value!r}; valid: {', '.join(meta.choices)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if meta.minimum is not None and value < meta.minimum:
            raise UserError(f"{name} must be at least {meta.minimum:g}, got {value:g}")
        if meta.above is not None and value <= meta.above:
            raise UserError(f"{name} must be more than {meta.above:g}, got {value:g}")
        if meta.within is not None and not meta.within[0] <= value < meta.within[1]:
            raise UserError(f"{name} must be in [{meta.within[0]:g}, {meta.within[1]:g}), got {value:g}")


def _help(field: dataclasses.Field, meta: Flag) -> str:
    """The help text, with the default (and the quick sweep's value) taken from the declaration."""
    text = meta.help
    if meta.choices:
        text += f" One of: {', '.join(meta.choices)}."
    default = default_of(field)
    if meta.quick is not None:
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        quick = ",".join(map(str, meta.quick)) if isinstance(meta.quick, list) else meta.quick
        text += f" [default: {shown}; quick sweep: {quick}]"
    return text


def _parameter(field: dataclasses.Field, hints: dict[str, Any]) -> inspect.Parameter:
    meta: Flag = field.metadata["cli"]
    annotation = meta.cli_type or hints[field.name]
    # A field the quick sweep sets, or one that is parsed, is None on the command line until given.
    default = None if meta.quick is not None or meta.parse is not None else default_of(field)
    if meta.argument:
        info = typer.Argument(default if default is not None else ..., help=meta.help, show_default=False)
    else:
        show = meta.quick is None and default is not None
        info = typer.Option(default, *meta.flags, help=_help(field, meta), show_default=show)
    return inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def command(body: Callable, *declarations: type) -> Callable:
    """A function for ``app.command()`` whose parameters are the declared fields of ``declarations``; it
    calls ``body`` with the command line's values, parsed, by field name: ``body(**values)``.

    The command's help is ``body``'s docstring.
    """
    params, parsers = [], {}
    for cls in declarations:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if "cli" in field.metadata:
                params.append(_parameter(field, hints))
                parsers[field.name] = field.metadata["cli"].parse

    def run(**values: Any) -> Any:
        for name, parse in parsers.items():
            if parse is not None and values.get(name) is not None:
                values[name] = parse(values[name])
        return body(**values)

    params.sort(key=lambda p: not isinstance(p.default, typer.models.ArgumentInfo))  # arguments first
    run.__signature__ = inspect.Signature(params)
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__doc__ = body.__doc__
    run.__name__ = body.__name__
    return run


def given(values: dict[str, Any], cls: type) -> dict[str, Any]:
    """The ``values`` that belong to ``cls`` and were given (not None)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names and v is not None}
