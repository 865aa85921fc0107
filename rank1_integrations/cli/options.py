"""The flags of the shared settings, derived from ``Rank1Settings``, and the ``--config`` file.

Only flags the user gave are passed on (argparse ``SUPPRESS``), so they override ``RANK1_*``
variables and the file without hiding them.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rank1_integrations.errors import InvalidInputError
from rank1_integrations.settings import Rank1Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["flag_of", "parse"]


def flag_of(name: str) -> str:
    """``servers`` -> ``--server``, ``engine_args`` -> ``--engine-arg``, ``max_retries`` -> ``--max-retries``."""
    base = name[:-1] if _kind(name) in ("list", "dict") else name
    return "--" + base.replace("_", "-")


def _kind(name: str) -> str:
    annotation = Rank1Settings.model_fields[name].annotation
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    origins = {typing.get_origin(a) or a for a in (typing.get_args(annotation) if union else (annotation,))}
    # verify (bool | str) is text: --verify false, or a CA bundle
    return "dict" if dict in origins else "list" if tuple in origins else "bool" if origins == {bool} else "text"


def _add_settings(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (also RANK1_<NAME> variables or top-level keys of --config)")
    for name, field in Rank1Settings.model_fields.items():
        if name == "api_key":  # a secret never goes on a command line
            continue
        kind, flag, default = _kind(name), flag_of(name), field.get_default(call_default_factory=True)
        help_text = f"{field.description} (default: {default!r})".replace("%", "%%")
        options: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if kind == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif kind in ("list", "dict"):
            metavar = "KEY=VALUE" if kind == "dict" else name[:-1].upper()
            group.add_argument(flag, action="append", metavar=metavar, **{**options, "help": f"{help_text}; repeat"})
        else:
            group.add_argument(flag, metavar=name.upper(), **options)


def _key_values(items: Sequence[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InvalidInputError(f"engine_args: --engine-arg needs KEY=VALUE, got {item!r}")
        try:
            found[key] = json.loads(raw)
        except ValueError:
            found[key] = raw
    return found


def _table_argv(parser: argparse.ArgumentParser, config: str, table: str) -> list[str]:
    """The file's ``[table]`` as flags, put before the command line's (which win)."""
    try:
        values = tomllib.loads(Path(config).read_text(encoding="utf-8")).get(table, {})
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        parser.error(f"config {config!r} cannot be read: {error}")
    argv: list[str] = []
    for key, value in values.items():
        action = parser._option_string_actions.get("--" + key.replace("_", "-"))
        if action is None or action.dest != key or key in Rank1Settings.model_fields or key == "config":
            parser.error(f"config [{table}] {key}: unknown option of rank1 {table}")
        for item in value if isinstance(value, list) else [value]:
            if item is True or (item is False and len(action.option_strings) > 1):
                argv.append(action.option_strings[0 if item else -1])
            elif item is not False:
                argv += [action.option_strings[0], str(item)]
    return argv


def parse(
    parser: argparse.ArgumentParser, argv: Sequence[str], table: str | None
) -> tuple[argparse.Namespace, Rank1Settings]:
    """The command's own options and the settings (flags > env > ``--config`` > defaults); mistakes exit 2."""
    where = f"; its [{table}] table: this command's options" if table else ""
    parser.add_argument("--config", metavar="TOML", help=f"rank1.toml: settings at the top{where}")
    _add_settings(parser)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    config = pre.parse_known_args(argv)[0].config
    args = parser.parse_args([*(_table_argv(parser, config, table) if config and table else ()), *argv])
    given = {name: value for name, value in vars(args).items() if name in Rank1Settings.model_fields}
    try:
        if "engine_args" in given:
            given["engine_args"] = _key_values(given["engine_args"])
        settings = Rank1Settings.load(args.config, **given)
    except InvalidInputError as error:
        parser.error(str(error))
    return args, settings
