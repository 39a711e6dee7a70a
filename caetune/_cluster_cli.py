"""``caetune submit``, ``status``, ``logs`` and ``stop``: caetune commands as jobs on a Ray
cluster.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from caetune._errors import InputError

# Imported by `caetune submit --help`: keep module-level imports light (no ray, no torch).

_ADDRESS_HELP = "the cluster's dashboard (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, else http://127.0.0.1:8265)"


def register(subparsers) -> None:
    """Adds the four sub-commands (this module is listed once per command in ``caetune.cli``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", metavar="URL", help=_ADDRESS_HELP)

    submit = subparsers.add_parser(
        "submit",
        parents=[common],
        help="run a caetune command (a search) as a job on a Ray cluster",
        description=(
            "Send a caetune command to a running Ray cluster through the Ray Jobs API, print the "
            "job id, then stream its logs until it ends (exit code: 0 succeeded, 130 stopped, "
            "else the job's own). The checkout caetune runs from is uploaded with it; CAETUNE_* "
            "and AWS_REGION are passed on, AWS keys never. Example: caetune submit -- search "
            "--space paper-mnist --gpus-per-trial 1 --run-root s3://BUCKET/runs"
        ),
    )
    submit.add_argument(
        "--no-wait", action="store_true", help="print the job id and return at once"
    )
    submit.add_argument(
        "--working-dir",
        metavar="DIR",
        help="the checkout to upload (default: the one caetune runs from)",
    )
    submit.add_argument(
        "--no-working-dir",
        action="store_true",
        help="upload nothing: run the caetune installed on the cluster",
    )
    submit.add_argument(
        "--pip",
        action="append",
        metavar="REQUIREMENT",
        help="also install this for the job (repeatable)",
    )
    submit.add_argument(
        "args", nargs="*", metavar="-- COMMAND", help="the caetune command and its flags, after --"
    )
    submit.set_defaults(func=run_submit)

    # status, logs and stop each act on one JOB: (help, description, function to run).
    job_commands = {
        "status": (
            "show one job, or all jobs, of a Ray cluster",
            "Print JOB's status and message, or one line per job when JOB is left out.",
            run_status,
        ),
        "logs": ("print a job's logs", "Print the logs of JOB so far.", run_logs),
        "stop": ("stop a job", "Stop JOB and wait until it has ended.", run_stop),
    }
    parsers = {}
    for name, (help_text, description, func) in job_commands.items():
        parser = subparsers.add_parser(
            name, parents=[common], help=help_text, description=description
        )
        parser.add_argument(
            "job",
            nargs="?" if name == "status" else None,
            metavar="JOB",
            help="a job id printed by caetune submit",
        )
        parser.set_defaults(func=func)
        parsers[name] = parser
    parsers["logs"].add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="stream until the job ends; exit code as for caetune submit",
    )
    parsers["stop"].add_argument(
        "--timeout", type=float, default=60.0, metavar="S", help="seconds to wait (default 60)"
    )


def check_remote_command(args: list[str]) -> argparse.Namespace | None:
    """Parses the command a job will run, here, so a typo fails before anything is sent.

    Raises:
        InputError: It is not a caetune command that can run in a job.
        SystemExit: Its flags do not parse (one line on stderr, exit code 2).
    """
    from caetune._cluster import CLUSTER_COMMANDS
    from caetune.cli import COMMANDS, build_parser

    runnable = [name for name in COMMANDS if name not in CLUSTER_COMMANDS]
    if args == ["--version"]:
        return None
    if not args or args[0] not in runnable:
        given = f", not {args[0]!r}" if args else ""
        expected = (
            f"{', '.join(runnable)} or --version after --, e.g. caetune submit -- search ...{given}"
        )
        raise InputError("COMMAND", expected)
    return build_parser({args[0]: COMMANDS[args[0]]}).parse_args(args)


def run_submit(args: argparse.Namespace) -> int:
    from caetune import __version__
    from caetune._cluster import build_runtime_env, connect, project_checkout

    parsed = check_remote_command(args.args)
    if args.working_dir and args.no_working_dir:
        raise InputError("--working-dir", "either a folder to upload or --no-working-dir, not both")
    working_dir = (
        None
        if args.no_working_dir
        else (Path(args.working_dir) if args.working_dir else project_checkout())
    )
    runtime_env = build_runtime_env(working_dir=working_dir, pip=args.pip)
    client = connect(args.address)
    if (
        parsed is not None
        and parsed.command == "search"
        and not str(parsed.run_root or parsed.storage or "").startswith("s3://")
    ):
        print(
            "caetune submit: note: without --run-root s3://..., results stay on the head's disk",
            file=sys.stderr,
        )

    job_id = client.submit(
        args.args, runtime_env=runtime_env, metadata={"caetune_version": __version__}
    )
    print(job_id, flush=True)
    code = f"uploaded {working_dir}" if working_dir else "the caetune installed there"
    print(f"caetune submit: job {job_id} sent to {client.address} ({code})", file=sys.stderr)
    if args.no_wait:
        print(f"caetune submit: follow it with `caetune logs --follow {job_id}`", file=sys.stderr)
        return 0
    return _follow(client, job_id, "submit")


def run_status(args: argparse.Namespace) -> int:
    from caetune._cluster import connect

    client = connect(args.address)
    if args.job:
        print(_describe(client.details(args.job)))
        return 0
    jobs = client.jobs()
    for job in jobs:
        print(f"{_describe(job)}  {job.entrypoint}")
    if not jobs:
        print(f"caetune status: no jobs on {client.address}", file=sys.stderr)
    return 0


def run_logs(args: argparse.Namespace) -> int:
    from caetune._cluster import connect

    client = connect(args.address)
    if args.follow:
        return _follow(client, args.job, "logs")
    sys.stdout.write(client.logs(args.job))
    return 0


def run_stop(args: argparse.Namespace) -> int:
    from caetune._cluster import connect

    if args.timeout <= 0:
        raise InputError("--timeout", f"seconds > 0, not {args.timeout}")
    client = connect(args.address)
    before = client.details(args.job)
    if before.status.is_terminal():
        print(f"{_describe(before)} (already ended)")
        return 0
    after = client.stop(args.job, timeout=args.timeout)
    print(_describe(after))
    if not after.status.is_terminal():
        print(f"caetune stop: {args.job} has not ended after {args.timeout:g} s", file=sys.stderr)
        return 1
    return 0


def _follow(client, job_id: str, command: str) -> int:
    from caetune._cluster import exit_code

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    try:
        details = client.follow(job_id, write)
    except KeyboardInterrupt:
        print(
            f"caetune {command}: stopped following; job {job_id} goes on (`caetune stop {job_id}` "
            "ends it)",
            file=sys.stderr,
        )
        return 130
    print(f"caetune {command}: {_describe(details)}", file=sys.stderr)
    return exit_code(details)


def _describe(job) -> str:
    """``JOB  STATUS  message`` on one line."""
    status = getattr(job.status, "value", job.status)
    message = " ".join(str(job.message or "").split())
    return f"{job.submission_id or job.job_id}  {status}  {message}".rstrip()
