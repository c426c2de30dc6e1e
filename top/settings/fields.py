"""A setting declared once: ``option(...)`` makes a dataclass field that carries its flag.

A config class is a frozen dataclass whose fields are made by :func:`option`; its
``__post_init__`` calls :func:`check_fields`, so ``TrainConfig(target_sparsity=2.0)`` from Python
fails with the same sentence as ``--target-sparsity 2.0`` on the command line.
``top.commands.flags`` builds each command's parser from the same fields (the flag is the field's
name with dashes, its default and help come from here), and :func:`record` writes a config as
plain JSON values for ``run.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from top.errors import UserError, brief

# The argument groups of ``--help``, in the order they are shown.
GROUPS = ("model and data", "pruning", "optimisation", "evaluation", "run", "output")


@dataclasses.dataclass(frozen=True)
class Flag:
    """How a field appears on the command line, and how its value is checked."""

    help: str
    check: Optional[Callable[[Any], Any]] = None  # text or value -> value, or argparse.ArgumentTypeError
    choices: Optional[Sequence[str]] = None
    group: str = "run"
    required: bool = False  # on the command line; from Python the field simply has no default
    switch: bool = False  # a flag without a value: ``store_true``
    negative: Optional[str] = None  # the flag that turns a default-on switch off, e.g. --no-teacher-cache
    negative_help: str = ""
    exclusive: Optional[str] = None  # flags that share this name are mutually exclusive
    default_text: Optional[str] = None  # ``--help``'s word for a default decided later ("the task preset")
    metavar: Optional[str] = None
    name: Optional[str] = None  # the flag, where it is not --field-name
    hidden: bool = False  # accepted but not shown by --help (deprecated flags)

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"unknown flag group {self.group!r}; use one of {GROUPS}")


_REQUIRED = dataclasses.MISSING


def option(default: Any = _REQUIRED, **flag: Any) -> Any:
    """A dataclass field holding ``default`` (none: the field is required) and its :class:`Flag`."""
    metadata = {"flag": Flag(**flag)}
    if default is _REQUIRED:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(field: dataclasses.Field) -> Optional[Flag]:
    return field.metadata.get("flag")


def flag_name(field: dataclasses.Field) -> str:
    flag = flag_of(field)
    return (flag.name if flag and flag.name else None) or "--" + field.name.replace("_", "-")


def check_fields(settings: Any) -> None:
    """Check and normalise every field of a frozen config in place: a bad value is a one-sentence
    :class:`UserError` naming the config, the field and the fix (None always passes: "decided later")."""
    for field in dataclasses.fields(settings):
        flag = flag_of(field)
        value = getattr(settings, field.name)
        if flag is None or value is None:
            continue
        try:
            value = check_value(field, value)
        except argparse.ArgumentTypeError as error:
            raise UserError(
                f"{type(settings).__name__}({field.name}=...): {str(error).rstrip('.')} "
                f"(the command line's {flag_name(field)})."
            ) from None
        object.__setattr__(settings, field.name, value)


def check_value(field: dataclasses.Field, value: Any) -> Any:
    """One field's value checked and normalised as its flag takes it; ``argparse.ArgumentTypeError``
    (whose text says what is wrong and what to give) when it is refused."""
    flag = flag_of(field)
    if flag is None or value is None:
        return value
    try:
        if flag.switch or flag.negative:
            if not isinstance(value, bool):
                raise argparse.ArgumentTypeError(f"{brief(value)} is not True or False")
        elif flag.choices is not None and value not in flag.choices:
            raise argparse.ArgumentTypeError(
                f"{brief(value)} is not one of {', '.join(map(str, flag.choices))}; pick one of those"
            )
        elif flag.check is not None:
            value = flag.check(value)
    except (ValueError, TypeError) as error:  # ArgumentTypeError is neither
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def record(settings: Any) -> Dict[str, Any]:
    """A config as plain JSON values (paths as text), for ``run.json``."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return str(value) if isinstance(value, Path) else value

    return {field.name: plain(getattr(settings, field.name)) for field in dataclasses.fields(settings)}


def defaults(cls: Any) -> Dict[str, Any]:
    """The default of every field of a config class that has one."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
