"""Registry writes that survive concurrent writers: an idempotent write that loses a uniqueness race is sent again.

MLflow's SQL store sets a tag or an alias with a read-then-insert, so two requests writing one key at the same
moment can collide: the loser gets ``UNIQUE constraint failed`` (SQLite) or ``duplicate key value violates unique
constraint`` (PostgreSQL), wrapped in an ``MlflowException`` whether the store is local or behind a server. Writing
the same value again is safe, so such a write is retried with a short, jittered backoff; any other error is raised
at once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from mlflow.exceptions import MlflowException

ATTEMPTS = 6  # the last waits about 0.05 * 2**4 s: under a second in all, long enough for a burst of writers
BASE_DELAY_S = 0.05
# How the uniqueness race (and SQLite's writer lock) reads in the error text of each backend and driver.
CONFLICT_MARKERS: tuple[str, ...] = (
    "unique constraint",  # sqlite3: "UNIQUE constraint failed"; postgres: "violates unique constraint"
    "uniqueviolation",  # psycopg2.errors.UniqueViolation
    "duplicate key",  # postgres, mysql
    "duplicate entry",  # mysql
    "integrityerror",  # sqlalchemy.exc.IntegrityError
    "database is locked",  # sqlite: another writer holds the file
)

T = TypeVar("T")


def is_conflict(exc: BaseException) -> bool:
    """True when an MLflow error is a write that lost a race to an equal write, so sending it again is safe."""
    if not isinstance(exc, MlflowException):
        return False
    text = f"{getattr(exc, 'message', '')} {exc}".lower()
    return any(marker in text for marker in CONFLICT_MARKERS)


def retried(
    write: Callable[..., T], *args: Any, attempts: int = ATTEMPTS, sleep: Callable[[float], Any] | None = None, **kw
) -> T:
    """``write(*args, **kw)``; an idempotent write that hits a uniqueness conflict is tried up to ``attempts`` times."""
    for attempt in range(attempts - 1):
        try:
            return write(*args, **kw)
        except MlflowException as exc:
            if not is_conflict(exc):
                raise
            (sleep or time.sleep)(BASE_DELAY_S * 2**attempt * (1 + random.random()))
    return write(*args, **kw)


def set_version_tag(client, name: str, version: str, key: str, value: str) -> None:
    """One model-version tag, retried on a uniqueness conflict (every registry tag write goes through here)."""
    retried(client.set_model_version_tag, name, str(version), key, str(value))
