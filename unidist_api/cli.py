"""The ``unidist-api`` command (also ``python -m unidist_api``).

``unidist-api run [--backend B] [--address A] [--workers N] script.py [args...]`` runs
a script as ``python script.py args`` would, with that configuration in force for
every executor the script creates without explicit arguments (it is passed on as
the ``UNIDIST_API_*`` environment variables, so subprocesses see it too).
``unidist-api info [--backend B] [--address A] [--workers N]`` prints the resolved
configuration, where each value came from, and versions.
``unidist-api checkpoint info PATH`` prints what a checkpoint journal holds.
``unidist-api --version`` prints the version.

``run`` and ``info`` check the configuration first (the backend is known and installed,
the worker count, the address, the config file's values) without starting an engine: a
bad one is exit status 2, with the same message from both, before the script starts.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import traceback
from collections.abc import Sequence
from importlib import metadata

from . import __version__, config
from .errors import InvalidOptionError, UnidistError

#: How the command line spells the layer it adds (for messages naming the fix).
_FLAGS = {"command line": "--{}"}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unidist-api", description="Run programs written against unidist-api on any backend."
    )
    parser.add_argument("--version", action="version", version=f"unidist-api {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def add_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--backend", help="serial, local, ray, dask, ... (default: configuration)")
        sub.add_argument("--address", help="address of a running cluster to connect to")
        sub.add_argument("--workers", type=int, help="number of workers")

    run = commands.add_parser("run", help="run a script with this configuration")
    add_config(run)
    run.add_argument("script", help="the Python script to run")
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the script")
    info = commands.add_parser("info", help="print the resolved configuration and versions")
    add_config(info)
    checkpoint = commands.add_parser("checkpoint", help="inspect checkpoint journals")
    actions = checkpoint.add_subparsers(dest="action", required=True)
    journal = actions.add_parser("info", help="print what a journal holds")
    journal.add_argument("path", help="the journal (the checkpoint= path of a map or pipeline)")
    return parser


def _export(args: argparse.Namespace) -> None:
    """Put the command-line configuration where every executor will find it."""
    for value, name in (
        (args.backend, config.ENV_BACKEND),
        (args.address, config.ENV_ADDRESS),
        (args.workers, config.ENV_WORKERS),
    ):
        if value is not None:
            os.environ[name] = str(value)


def checked_settings(args: argparse.Namespace) -> config.Settings:
    """The configuration ``run`` and ``info`` use, checked; raises UnidistError if bad."""
    config.check_workers(args.workers, "--workers")
    if args.address is not None:
        if not args.address.strip():
            raise InvalidOptionError("--address must not be empty")
    settings = config.resolve(
        config.Layer("command line", args.backend, args.address, args.workers)
    )
    config.check_settings(settings, _FLAGS)
    return settings


def run_script(script: str, argv: Sequence[str]) -> int:
    """Execute ``script`` as ``__main__`` with ``sys.argv``; return its exit code."""
    path = os.path.abspath(script)
    if not os.path.isfile(path):
        print(f"unidist-api run: no such file: {script}", file=sys.stderr)
        return 2
    sys.argv = [script, *argv]
    sys.path.insert(0, os.path.dirname(path))
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except BaseException as exc:
        tb = exc.__traceback__
        while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != path:
            tb = tb.tb_next  # show the script's frames, as `python script.py` would
        traceback.print_exception(type(exc), exc, tb or exc.__traceback__)
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    return 0


def info(args: argparse.Namespace) -> int:
    """Print the resolved configuration with its sources, the backend's facts, versions."""
    settings = checked_settings(args)
    sources = settings.sources
    print("configuration:")
    print(f"  backend: {settings.backend}  ({sources['backend']})")
    print(f"  address: {settings.address}  ({sources.get('address', 'default')})")
    workers = settings.workers
    print(
        f"  workers: {workers if workers is not None else 'backend default'}"
        f"  ({sources.get('workers', 'default')})"
    )
    for name, value in settings.options.items():
        print(f"  {name}: {value!r}  ({sources[name]})")
    from .executor import Executor

    executor = Executor(settings.backend, settings.address, settings.workers, **settings.options)
    try:
        print(f"{settings.backend}:")
        for name, value in executor._backend.describe().items():
            print(f"  {name}: {value}")
    finally:
        executor.shutdown()
    print("versions:")
    print(f"  python: {sys.version.split()[0]}")
    for package in ("unidist-api", "cloudpickle", "loky", "ray", "dask", "distributed"):
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "not installed"
        print(f"  {package}: {version}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            checked_settings(args)
            _export(args)
            return run_script(args.script, args.args)
        if args.command == "checkpoint":
            from .journal import describe

            print("\n".join(describe(args.path)))
            return 0
        return info(args)
    except UnidistError as exc:
        print(f"unidist-api {args.command}: {exc}", file=sys.stderr)
        return 2
