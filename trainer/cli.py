"""What the trainer's commands share on the command line: help that shows every default,
count and integer types, and TrainConfig's errors in the flags' names."""

from __future__ import annotations

import argparse
import re

from dolmino.argtypes import count_value, positive_int  # positive_int: counts of things; this module's API too

__all__ = ["FLAG_OF_FIELD", "GivenOnce", "HelpFormatter", "in_flag_names", "parse_count", "positive_int"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to every option that has one; an option whose default is None
    or computed says in its own help text what it defaults to (and contains "default")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.default is None or action.default is argparse.SUPPRESS
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


class GivenOnce(argparse.Action):
    """An option of one value that may be given once: argparse keeps the last of two, so `--mix
    a.json --mix b.json` trained on b's build alone, unsaid (found by a tester). `hint`: what to
    do instead, added to the error."""

    def __init__(self, *args, hint: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.hint = hint

    def __call__(self, parser, namespace, values, option_string=None):
        if (before := getattr(namespace, self.dest, None)) is not None:
            parser.error(f"{option_string} was given twice ({before}, then {values}); it takes one{self.hint}")
        setattr(namespace, self.dest, values)


def parse_count(text: str) -> int:
    """'4T', '50B', '2.5M', '1000' -> int, by the manifest's rules (the same counts, the same suffixes)."""
    try:
        return count_value(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None



# TrainConfig's fields whose flag is not the field's name with dashes.
FLAG_OF_FIELD = {"global_batch_size": "--batch-size", "max_steps": "--steps"}


def in_flag_names(message: str) -> str:
    """A TrainConfig (or ModelConfig) error as the command line's user reads it: the field it
    starts with named by its flag ("micro_batch_size must be ..." -> "--micro-batch-size must be
    ..."; a user of `--micro-batch-size 0` was told of `TrainConfig.micro_batch_size`)."""
    from dataclasses import fields

    from trainer.config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}

    def flag(match: re.Match) -> str:
        name = match.group(1)
        return FLAG_OF_FIELD.get(name, "--" + name.replace("_", "-")) if name in names else match.group(0)

    return re.sub(r"^(?:TrainConfig\.)?([a-z_]+)\b", flag, message)
