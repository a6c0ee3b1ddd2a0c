"""`--help` that shows every default, for all of the project's command-line parsers.

argparse's own ArgumentDefaultsHelpFormatter appends "(default: None)" to options that
have no default and "(default: False)" to every flag, which buries the defaults that
matter, and it says nothing for an option that has no help text. This formatter appends
"(default: X)" only when there is a real default and the help does not already state
one, and it keeps descriptions and epilogs laid out as written (usage examples survive).
"""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Raw description/epilog + "(default: X)" after each option that has a real default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or default == []
                or "default" in help_text.lower()):
            return help_text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return help_text  # a required positional has no default to show
        return f"{help_text} (default: %(default)s)" if help_text else "(default: %(default)s)"

    def _format_action(self, action: argparse.Action) -> str:
        # argparse skips the help column entirely when `help` is empty, which would hide the
        # default of an option nobody wrote a help text for.
        if not action.help and self._get_help_string(action):
            action.help = self._get_help_string(action)
        return super()._format_action(action)
