"""PostgreSQL store: migrations, the exactly-once writer and the reader."""

from trainscope.collector.store.embedded import resolve_database_url
from trainscope.collector.store.errors import StoreState
from trainscope.collector.store.migrate import apply_migrations
from trainscope.collector.store.model import LatestValue, RunInfo, StoreHealth, StoreUnavailable, WriteResult
from trainscope.collector.store.store import Store

__all__ = [
    "LatestValue", "RunInfo", "Store", "StoreHealth", "StoreState", "StoreUnavailable", "WriteResult",
    "apply_migrations", "resolve_database_url",
]
