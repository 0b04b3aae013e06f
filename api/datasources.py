"""The one place where a source kind (series.kind) becomes a `data_source` name of the seed's API, and back."""

from __future__ import annotations

# Source kind -> the name the Training Performance API uses for it (seed 001: log, wandb, tensorflow).
KIND_TO_DATA_SOURCE: dict[str, str] = {
    "tensorboard": "tensorflow",
    "wandb": "wandb",
    "logs": "log",
    "swanlab": "swanlab",
    "qianfan": "qianfan",
    "mlflow": "mlflow",
}

# Accepted on input besides the canonical names: the kinds' own spellings.
ALIASES: dict[str, str] = {"tensorboard": "tensorflow", "logs": "log"}

DATA_SOURCES: tuple[str, ...] = tuple(KIND_TO_DATA_SOURCE.values())
ACCEPTED: tuple[str, ...] = (*DATA_SOURCES, *ALIASES)


def data_source_of(kind: str) -> str:
    """The API name of a source kind; a kind this table does not know keeps its own name."""
    return KIND_TO_DATA_SOURCE.get(kind, kind)


def canonical(name: str) -> str | None:
    """A data_source given by a client -> its canonical name, or None if it names no known source."""
    name = name.strip().lower()
    name = ALIASES.get(name, name)
    return name if name in DATA_SOURCES else None


def kinds_of(data_source: str) -> list[str]:
    """The source kinds stored under a canonical data_source name."""
    return [k for k, v in KIND_TO_DATA_SOURCE.items() if v == data_source]
