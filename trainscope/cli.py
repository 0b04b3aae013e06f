"""The `trainscope` command: operator, local, db upgrade, crd."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
from pathlib import Path

from trainscope import __version__


def _database_url(args: argparse.Namespace, *, embedded_ok: bool) -> str:
    from trainscope.collector.store import resolve_database_url

    if getattr(args, "database_url", None):
        return args.database_url
    data_dir = Path(args.data_dir) if getattr(args, "data_dir", None) else None
    return resolve_database_url(embedded_ok=embedded_ok, data_dir=data_dir)


def cmd_operator(args: argparse.Namespace) -> int:
    """Run the kopf operator with the project's handlers and settings."""
    import kopf

    import trainscope.operator.handlers  # noqa: F401  (registers the handlers)
    from trainscope.operator.runtime import RuntimeConfig

    config = RuntimeConfig(database_url=_database_url(args, embedded_ok=False),
                           metrics_port=args.metrics_port or None)
    kopf.configure(verbose=args.verbose)
    namespaces = args.namespace or []
    asyncio.run(kopf.operator(
        clusterwide=not namespaces, namespaces=namespaces, standalone=args.standalone,
        liveness_endpoint=args.liveness, memo=kopf.Memo(config=config)))
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    """Run the collectors of Workload YAML files with no cluster, on the embedded PostgreSQL by default."""
    from trainscope.operator.local import ManifestError, load_workloads, run_local
    from trainscope.operator.runtime import RuntimeConfig

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
    config = RuntimeConfig(database_url=_database_url(args, embedded_ok=True),
                           metrics_port=args.metrics_port or None, backoff_cap=30.0)
    try:
        asyncio.run(run_local(workloads, config, refresh=args.refresh))
    finally:
        stop_demo.set()
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

    op = sub.add_parser("operator", help="run the Kubernetes operator")
    db_options(op)
    op.add_argument("-n", "--namespace", action="append", help="watch only these namespaces (repeatable)")
    op.add_argument("--metrics-port", type=int, default=int(os.environ.get("TRAINSCOPE_METRICS_PORT", "9090")),
                    help="Prometheus /metrics port (0: off)")
    op.add_argument("--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz")
    op.add_argument("--standalone", action=argparse.BooleanOptionalAction, default=True,
                    help="no peering with other operator replicas (run one active replica)")
    op.set_defaults(func=cmd_operator)

    lo = sub.add_parser("local", help="collect for Workload YAML files with no cluster, with a live table")
    db_options(lo)
    lo.add_argument("-f", "--file", action="append", required=True, help="Workload manifest (repeatable)")
    lo.add_argument("--demo", action="store_true",
                    help="also run a simulated training job that writes the example's TensorBoard files")
    lo.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on this port (0: off)")
    lo.add_argument("--refresh", type=float, default=1.0, help="table refresh interval in seconds")
    lo.set_defaults(func=cmd_local)

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
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from trainscope.collector.store import StoreUnavailable
    from trainscope.collector.store.embedded import DatabaseNotConfigured

    try:
        return args.func(args)
    except (StoreUnavailable, DatabaseNotConfigured) as exc:
        print(f"trainscope {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
