"""The `trainscope` command: operator, local, api, db upgrade, crd."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from trainscope import __version__

_SEVERITY = {logging.WARNING: "warn", logging.CRITICAL: "fatal"}  # kopf's names for these two levels


class JsonFormatter(logging.Formatter):
    """One JSON object per line (timestamp, severity, logger, message[, exception]) for log collectors; the same
    field names as kopf's JSON format, which the operator uses."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"timestamp": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
               "severity": _SEVERITY.get(record.levelno, record.levelname.lower()), "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: bool, log_format: str) -> None:
    """Exactly one handler, on the root logger (stderr): every line once, in the chosen format."""
    handler = logging.StreamHandler()
    if log_format == "json":
        formatter: logging.Formatter = JsonFormatter()
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    from trainscope.collector.scrub import install_log_scrubber

    install_log_scrubber()  # every command: no secret reaches a log line, whichever library logs it


def _exit_on_sigterm() -> None:
    """SIGTERM and SIGHUP (the terminal closed) end the process through SystemExit, so `finally` blocks and atexit
    hooks run (the embedded PostgreSQL is stopped) instead of the default action killing it on the spot."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    with contextlib.suppress(ValueError):  # not the main thread (tests calling main() from a thread)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGHUP, handler)


def _positive_mb(text: str) -> float:
    """--batch-mb / TRAINSCOPE_BATCH_MB: a positive number of MiB."""
    try:
        mb = float(text)
    except ValueError:
        mb = 0.0
    if not 0 < mb <= 4096:
        raise argparse.ArgumentTypeError(f"batch size {text!r} (--batch-mb or TRAINSCOPE_BATCH_MB): give MiB "
                                         "above 0 and at most 4096, e.g. 32")
    return mb


def _batch_bytes(mb: float) -> int:
    return int(mb * 2**20)


def _database_url(args: argparse.Namespace, *, embedded_ok: bool) -> str:
    from trainscope.collector.store import resolve_database_url

    if getattr(args, "database_url", None):
        return args.database_url
    data_dir = Path(args.data_dir) if getattr(args, "data_dir", None) else None
    return resolve_database_url(embedded_ok=embedded_ok, data_dir=data_dir)


def _tune_gc() -> None:
    """The collecting processes allocate points by the million: see trainscope.gc_tuning."""
    from trainscope.gc_tuning import tune_for_ingest

    tune_for_ingest()


def cmd_operator(args: argparse.Namespace) -> int:
    """Run the kopf operator with the project's handlers and settings."""
    import kopf

    import trainscope.operator.handlers  # noqa: F401  (registers the handlers)
    from trainscope.operator.runtime import RuntimeConfig

    _tune_gc()
    config = RuntimeConfig(database_url=_database_url(args, embedded_ok=False),
                           metrics_port=args.metrics_port or None, discover_jobs=args.discover_jobs,
                           job_interval=args.job_interval, namespaces=tuple(args.namespace or ()),
                           max_batch_bytes=_batch_bytes(args.batch_mb))
    # INFO would log every status-timer run of every Workload (~200 lines/s at 1,000): warnings unless -v.
    # kopf's handler replaces ours (one handler: every line once), in kopf's JSON format with --log-format json.
    logging.getLogger().handlers.clear()
    fmt = kopf.LogFormat.JSON if args.log_format == "json" else TEXT_FORMAT
    kopf.configure(verbose=args.verbose, quiet=not args.verbose, log_format=fmt)
    namespaces = args.namespace or []
    asyncio.run(kopf.operator(
        clusterwide=not namespaces, namespaces=namespaces, standalone=args.standalone,
        liveness_endpoint=args.liveness, memo=kopf.Memo(config=config)))
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    """Run the collectors of Workload YAML files with no cluster, on the embedded PostgreSQL by default."""
    from trainscope.operator.local import ManifestError, load_workloads, run_local
    from trainscope.operator.runtime import RuntimeConfig

    _tune_gc()
    try:
        workloads = load_workloads([Path(f) for f in args.file])
    except ManifestError as err:
        print(f"trainscope local: {err}", file=sys.stderr)
        return 2
    stop_demo = threading.Event()
    if args.demo:
        from trainscope.demo import simulate

        for wl in workloads:
            for src in wl.spec["sources"]:
                logdir = (src.get("tensorboard") or {}).get("logDir")
                if logdir:
                    threading.Thread(target=simulate, args=(wl.base_dir / logdir,),
                                     kwargs={"stop": stop_demo, "total_steps": wl.spec.get("totalSteps", 3000)},
                                     daemon=True, name="demo-writer").start()
    secrets_dir = Path(args.secrets_dir) if args.secrets_dir else None
    if secrets_dir is not None and not secrets_dir.is_dir():
        print(f"trainscope local: --secrets-dir {secrets_dir}: not a directory", file=sys.stderr)
        return 2
    config = RuntimeConfig(database_url=_database_url(args, embedded_ok=True),
                           metrics_port=args.metrics_port or None, metrics_host=args.metrics_host,
                           backoff_cap=30.0, secrets_dir=secrets_dir, max_batch_bytes=_batch_bytes(args.batch_mb))
    api = None
    if args.api_port:
        from trainscope.api.server import read_token
        from trainscope.operator.local import LocalApi

        api = LocalApi(port=args.api_port, host=args.api_host, token=read_token(args.api_token_file),
                       cors_origins=tuple(args.cors_origin or ()))
        _warn_if_open("local", api.host, api.token)
    from rich.console import Console

    console = Console()
    refresh = args.refresh if args.refresh is not None else (1.0 if console.is_terminal else 10.0)
    try:
        asyncio.run(run_local(workloads, config, console=console, refresh=refresh, api=api))
    finally:
        stop_demo.set()
        _exit_on_sigterm()  # asyncio put SIGTERM back to its default action when the loop ended
    return 0


def _warn_if_open(command: str, host: str, token: str | None) -> None:
    """Say so when the API listens beyond this machine with no token: anyone who reaches it reads every metric."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if token is None and not loopback:
        print(f"trainscope {command}: WARNING: the API listens on {host} without a token (set "
              "TRAINSCOPE_API_TOKEN or a token file): anyone who can reach it reads every Workload's metrics",
              file=sys.stderr)


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the Training Performance REST API (read-only) over the store."""
    from trainscope.api.app import ApiSettings
    from trainscope.api.server import AddressInUse, read_token, run

    settings = ApiSettings(database_url=_database_url(args, embedded_ok=True), token=read_token(args.token_file),
                           cors_origins=tuple(args.cors_origin or ()), pool_size=args.pool_size,
                           statement_timeout=args.statement_timeout, answer_cache_mb=args.answer_cache_mb)
    _warn_if_open("api", args.host, settings.token)
    try:
        run(settings, args.host, args.port, access_log=args.access_log)  # returns on SIGINT/SIGTERM
    except AddressInUse as exc:
        print(f"trainscope api: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Apply pending schema migrations and print what was applied."""
    from trainscope.collector.store import apply_migrations

    applied = asyncio.run(apply_migrations(_database_url(args, embedded_ok=True)))
    print("\n".join(applied) if applied else "database is up to date")
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    """Print the Workload CRD built from the registered source kinds."""
    from trainscope.operator.crd import main as crd_main

    crd_main()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainscope", description=__doc__)
    parser.add_argument("--version", action="version", version=f"trainscope {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def db_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--database-url", default=os.environ.get("TRAINSCOPE_DATABASE_URL"),
                       help="PostgreSQL URL (env TRAINSCOPE_DATABASE_URL); local mode defaults to an embedded one")
        p.add_argument("--data-dir", default=os.environ.get("TRAINSCOPE_DATA_DIR"),
                       help="where the embedded PostgreSQL keeps its data")

    def api_auth_options(p: argparse.ArgumentParser, token_flag: str) -> None:
        p.add_argument(token_flag, dest=token_flag.lstrip("-").replace("-", "_"),
                       default=os.environ.get("TRAINSCOPE_API_TOKEN_FILE"),
                       help="file holding the bearer token clients must send (a mounted Secret); without it "
                            "$TRAINSCOPE_API_TOKEN, and without that no authentication")
        p.add_argument("--cors-origin", action="append",
                       default=[o for o in os.environ.get("TRAINSCOPE_API_CORS_ORIGINS", "").split(",") if o],
                       help="allow browser requests from this origin (repeatable; '*' for any)")

    def batch_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--batch-mb", type=_positive_mb, default=os.environ.get("TRAINSCOPE_BATCH_MB", "16"),
                       help="memory of one catch-up batch in MiB (env TRAINSCOPE_BATCH_MB; default 16, about "
                            "54,000 points); two batches are in flight per source while catching up")

    def log_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--log-format", choices=("text", "json"),
                       default=os.environ.get("TRAINSCOPE_LOG_FORMAT", "text"),
                       help="log lines as text or as one JSON object each (env TRAINSCOPE_LOG_FORMAT)")

    op = sub.add_parser("operator", help="run the Kubernetes operator")
    db_options(op)
    log_options(op)
    batch_options(op)
    op.add_argument("-n", "--namespace", action="append", help="watch only these namespaces (repeatable)")
    op.add_argument("--metrics-port", type=int, default=int(os.environ.get("TRAINSCOPE_METRICS_PORT", "9090")),
                    help="Prometheus /metrics port (0: off)")
    op.add_argument("--discover-jobs", action=argparse.BooleanOptionalAction, default=False,
                    help='create a Workload for each training job annotated trainscope.io/collect: "true" '
                         "(docs/following-jobs.md)")
    op.add_argument("--job-interval", type=float, default=10.0,
                    help="seconds between two listings of the followed job kinds (default 10)")
    op.add_argument("--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    op.add_argument("--standalone", action=argparse.BooleanOptionalAction, default=True,
                    help="no peering with other operator replicas (run one active replica)")
    op.set_defaults(func=cmd_operator)

    lo = sub.add_parser("local", help="collect for Workload YAML files with no cluster, with a live table")
    db_options(lo)
    batch_options(lo)
    lo.add_argument("-f", "--file", action="append", required=True, help="Workload manifest (repeatable)")
    lo.add_argument("--demo", action="store_true",
                    help="also run a simulated training job that writes the example's TensorBoard files")
    log_options(lo)
    lo.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this port (0: off)")
    lo.add_argument("--metrics-host", default="127.0.0.1",
                    help="/metrics listen address (0.0.0.0: every interface)")
    lo.add_argument("--secrets-dir", default=os.environ.get("TRAINSCOPE_SECRETS_DIR"),
                    help="Secrets the Workloads reference, as files <dir>/<secret name>/<key> (the layout of a "
                         "mounted Kubernetes Secret); env TRAINSCOPE_SECRETS_DIR")
    lo.add_argument("--refresh", type=float, default=None,
                    help="seconds between table refreshes (default 1), or between status lines when the output is "
                         "not a terminal (default 10)")
    lo.add_argument("--api-port", type=int, default=int(os.environ.get("TRAINSCOPE_API_PORT", "8080")),
                    help="serve the REST API on this port while collecting (0: off)")
    lo.add_argument("--api-host", default="127.0.0.1",
                    help="the REST API's listen address (0.0.0.0: every interface; set a token then)")
    api_auth_options(lo, token_flag="--api-token-file")
    lo.set_defaults(func=cmd_local)

    ap = sub.add_parser("api", help="serve the Training Performance REST API (read-only)")
    db_options(ap)
    log_options(ap)
    ap.add_argument("--host", default=os.environ.get("TRAINSCOPE_API_HOST", "127.0.0.1"),
                    help="listen address (0.0.0.0: every interface, as the Helm chart sets it)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("TRAINSCOPE_API_PORT", "8080")),
                    help="listen port")
    ap.add_argument("--pool-size", type=int, default=10, help="database connections at most")
    ap.add_argument("--answer-cache-mb", type=int, default=64,
                    help="memory for downsampled answers shared between identical requests (0: off)")
    ap.add_argument("--statement-timeout", type=float, default=30.0,
                    help="seconds one SQL statement (or an idle open transaction) may take before PostgreSQL "
                         "cancels it and the request is answered 503")
    ap.add_argument("--access-log", action="store_true", help="log every request (paths and queries, never headers)")
    api_auth_options(ap, token_flag="--token-file")
    ap.set_defaults(func=cmd_api)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply schema migrations")
    db_options(up)
    up.set_defaults(func=cmd_db_upgrade)

    crd = sub.add_parser("crd", help="print the Workload CustomResourceDefinition")
    crd.set_defaults(func=cmd_crd)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, getattr(args, "log_format", "text"))
    _exit_on_sigterm()
    from trainscope.collector.store import StoreUnavailable
    from trainscope.collector.store.embedded import DatabaseNotConfigured, embedded_mark, stop_embedded
    from trainscope.collector.store.errors import CONFIG_REASONS
    from trainscope.gc_tuning import GcSettingError

    mark = embedded_mark()
    try:
        return args.func(args)
    except GcSettingError as exc:
        print(f"trainscope {args.command}: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        # 2: the database refused us (credentials, no database, no privilege), a person must act; 1: it is not
        # there right now (unreachable, hung), trying again later may do.
        print(f"trainscope {args.command}: database unavailable ({exc.reason}): {exc}", file=sys.stderr)
        return 2 if exc.reason in CONFIG_REASONS else 1
    except DatabaseNotConfigured as exc:
        print(f"trainscope {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        stop_embedded(mark)  # on every way out: a return, an exception, SIGINT, SIGTERM


if __name__ == "__main__":
    raise SystemExit(main())
