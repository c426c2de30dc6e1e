"""The command line built from the configs: one flag per field, grouped, its default shown.

:func:`add_config_arguments` turns a config class's fields (``top.settings.fields.option``) into
argparse flags; :func:`config_from_args` turns the parsed flags back into the config, which checks
itself. :class:`OneLineParser` keeps every usage error to one line and suggests the flag or
command the user probably meant.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Type, TypeVar

from top.settings.fields import GROUPS, flag_name, flag_of

Config = TypeVar("Config")


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, ``error: PROG: MESSAGE``, and exit 2,
    with "did you mean" for a mistyped flag or command."""

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # type: ignore[override]
        hint = self._suggestion(message)
        prog = self._command().prog if message.startswith("unrecognized arguments") else self.prog
        self.exit(2, f"error: {prog}: {message}{hint} (see `{prog} --help`)\n")

    def _options(self) -> List[str]:
        return [o for action in self._actions for o in action.option_strings if o.startswith("--")]

    def _command(self) -> argparse.ArgumentParser:
        """The sub-command's parser named in the arguments (``top train ...``), else this one."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                named = next((w for w in getattr(self, "_given", []) if w in action.choices), None)
                if named is not None:
                    return action.choices[named]
        return self

    def _suggestion(self, message: str) -> str:
        given = getattr(self, "_given", [])
        options = self._options()
        unknown = [word.split("=", 1)[0] for word in given if word.startswith("--")
                   and not any(o.startswith(word.split("=", 1)[0]) for o in options)]
        unrecognized = re.match(r"unrecognized arguments: (.*)", message)
        if unrecognized:  # raised here, after the sub-command's parser took what it knows: blame what it left
            command = self._command()
            options = [o for action in command._actions for o in action.option_strings if o.startswith("--")]
            unknown = [word.split("=", 1)[0] for word in unrecognized.group(1).split() if word.startswith("--")]
            if unknown:
                close = difflib.get_close_matches(unknown[0], options, n=1, cutoff=0.75)
                return f"; {unknown[0]} is not a flag of {command.prog}" + (f": did you mean {close[0]}?" if close
                                                                            else "")
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            options = [c.strip(" '\"") for c in choice.group(2).split(",")]
            close = difflib.get_close_matches(choice.group(1), options, n=1, cutoff=0.5)
            return f"; did you mean {close[0]!r}?" if close else ""
        if unknown:
            close = difflib.get_close_matches(unknown[0], options, n=1, cutoff=0.75)
            if close:
                return f"; {unknown[0]} is not a flag of {self.prog}: did you mean {close[0]}?"
            return f"; {unknown[0]} is not a flag of {self.prog}"
        return ""


def _escape(text: str) -> str:
    """argparse %-formats help texts: a literal % must be doubled."""
    return text.replace("%", "%%")


def _help(field: dataclasses.Field) -> str:
    flag = flag_of(field)
    text = flag.help
    if flag.default_text is not None:
        text += f" (default: {flag.default_text})"
    elif flag.switch or flag.required or field.default is dataclasses.MISSING or field.default is None:
        pass
    else:
        text += f" (default: {field.default})"
    return _escape(text)


def add_config_arguments(parser: argparse.ArgumentParser, cls: Type[Any], skip: Sequence[str] = ()) -> None:
    """One flag per field of ``cls`` that declares one, in argument groups, in ``GROUPS`` order."""
    fields = [f for f in dataclasses.fields(cls) if flag_of(f) is not None and f.name not in skip]
    groups: Dict[str, Any] = {}
    for name in GROUPS:
        if any(flag_of(f).group == name for f in fields):
            groups[name] = parser.add_argument_group(name)
    exclusive: Dict[str, Any] = {}
    for field in fields:
        flag = flag_of(field)
        target = groups[flag.group]
        if flag.exclusive:
            if flag.exclusive not in exclusive:
                exclusive[flag.exclusive] = target.add_mutually_exclusive_group()
            target = exclusive[flag.exclusive]
        kwargs: Dict[str, Any] = {"dest": field.name}
        kwargs["help"] = argparse.SUPPRESS if flag.hidden else _help(field)
        default = None if field.default is dataclasses.MISSING else field.default
        if flag.switch or flag.negative:
            kwargs.update(action="store_true", default=default)
        else:
            kwargs.update(default=default, required=flag.required)
            if flag.choices is not None:
                kwargs["choices"] = list(flag.choices)
            elif flag.check is not None:
                kwargs["type"] = flag.check
            if flag.metavar:
                kwargs["metavar"] = flag.metavar
        target.add_argument(flag_name(field), **kwargs)
        if flag.negative:
            target.add_argument(flag.negative, dest=field.name, action="store_false",
                                help=_escape(flag.negative_help) if not flag.hidden else argparse.SUPPRESS)


def config_from_args(cls: Type[Config], args: argparse.Namespace, **given: Any) -> Config:
    """The config of the parsed flags (``given`` for fields that are not flags)."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in given and hasattr(args, f.name)]
    return cls(**{name: getattr(args, name) for name in names}, **given)
