"""Command line: generate a synthetic math source into a directory of Dolma files.

    python -m dolmino.synth --generator arithmetic --out build/synth/arith --num-docs 100000 --partitions 16 --seed 1
    python -m dolmino.synth --generator gsm8k_numbers --out build/synth/gsm8k --num-docs 20000 --partitions 8 \
        [--gsm8k-jsonl gsm8k_train.jsonl]
    python -m dolmino.synth --generator tulu_math --personas personas.jsonl --out build/synth/tulu \
        --num-docs 1000 --partitions 8 --endpoint http://127.0.0.1:8000/v1 --model M --api-key-env OPENAI_API_KEY
    python -m dolmino.synth --generator mind --style two_students --out ... --endpoint ... --model M

Rerunning the same command resumes: finished partitions are kept. Prints the report JSON
(attempted / kept / rejected by reason / request counters) and exits 0, or 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys

from dolmino.help_format import DefaultsHelpFormatter
from dolmino.synth.base import REGISTRY, make_generator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dolmino.synth", description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--generator", required=True, choices=sorted(REGISTRY), help="what to generate")
    p.add_argument("--out", required=True, help="output directory (shared filesystem on a cluster)")
    p.add_argument("--num-docs", type=int, required=True, help="items to attempt (kept + rejected)")
    p.add_argument("--partitions", type=int, default=1, help="Spark tasks; each writes one part file")
    p.add_argument("--seed", type=int, default=0, help="generation seed (part of the config hash)")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL (LLM generators)")
    p.add_argument("--model", help="model name sent to the endpoint (LLM generators)")
    p.add_argument("--api-key-env", help="environment variable holding the API key (read in the executors)")
    p.add_argument("--requests-per-second", type=float, help="client-side rate limit per partition (default: none)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--max-retries", type=int, default=4, help="retries per request (backoff, Retry-After)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature sent to the endpoint")
    p.add_argument("--max-tokens", type=int, default=2048, help="max_tokens sent to the endpoint")
    p.add_argument("--personas", help="tulu_math: personas, JSONL ('persona' field) or one per line")
    p.add_argument("--style", action="append", help="mind: two_students / problem_solving (repeatable)")
    p.add_argument("--input", help="mind: Dolma JSONL of texts to rewrite (default: packaged GSM8K)")
    p.add_argument("--gsm8k-jsonl", help="gsm8k_numbers: GSM8K JSONL with question/answer (default: packaged test)")
    p.add_argument("--master", help="Spark master (default: local[*] unless spark-submit set one)")
    p.add_argument("--driver-memory", help="Spark driver memory when this command starts Spark itself, e.g. 4g "
                   "(default: Spark's)")
    return p.parse_args(argv)


def generator_params(args: argparse.Namespace) -> dict:
    params: dict = {"num_docs": args.num_docs}
    if args.generator == "gsm8k_numbers":
        params["data_path"] = args.gsm8k_jsonl
    if args.generator in ("tulu_math", "mind"):
        params.update(endpoint=args.endpoint, model=args.model, api_key_env=args.api_key_env,
                      requests_per_second=args.requests_per_second, timeout=args.timeout,
                      max_retries=args.max_retries, temperature=args.temperature, max_tokens=args.max_tokens)
    if args.generator == "tulu_math":
        if not args.personas:
            raise ValueError("tulu_math needs --personas FILE")
        params["personas_path"] = args.personas
    if args.generator == "mind":
        params["input_path"] = args.input
        if args.style:
            params["styles"] = args.style
    return params


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.num_docs < 0 or args.partitions < 1:
        print("error: --num-docs must be >= 0 and --partitions >= 1", file=sys.stderr)
        return 2
    try:
        generator = make_generator(args.generator, **generator_params(args))
        generator.config()  # loads inputs now: a missing file fails before Spark starts
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from dolmino.build_mix import make_spark
    from dolmino.synth.runner import run

    spark = make_spark(f"dolmino-synth-{args.generator}", args.master, args.driver_memory)
    try:
        report = run(generator, args.out, args.partitions, args.seed, spark)
    finally:
        spark.stop()
    print(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
