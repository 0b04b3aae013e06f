"""Schema migrations: plain .sql files applied in name order, each once, each in its own transaction."""

from __future__ import annotations

from importlib import resources

import asyncpg

from trainscope.collector.store.errors import unavailable_as_store_error

# Any fixed 64-bit number; advisory locks are per database, so this only serialises migrators of one database.
MIGRATION_LOCK_KEY = 0x7472_6169_6E73_6370  # "trainscp"

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def available_migrations() -> list[tuple[str, str]]:
    """(name, sql) of every migration shipped with the package, in the order they apply."""
    folder = resources.files("trainscope.collector.store").joinpath("migrations")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name, f.read_text(encoding="utf-8")) for f in files]


async def run_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply the pending migrations on `conn`; returns the names applied (empty when up to date).

    A session advisory lock makes concurrent starters wait for each other, and the ledger is read under it,
    so each file is applied exactly once however many processes start together.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
    try:
        await conn.execute(_CREATE_LEDGER)
        applied = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        done: list[str] = []
        for name, sql in available_migrations():
            if name in applied:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            done.append(name)
        return done
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)


async def apply_migrations(dsn: str, *, connect_timeout: float = 10.0) -> list[str]:
    """Bring the database at `dsn` up to date (used by `trainscope db upgrade`); returns the names applied."""
    with unavailable_as_store_error():
        conn = await asyncpg.connect(dsn, timeout=connect_timeout)
        try:
            return await run_migrations(conn)
        finally:
            await conn.close()
