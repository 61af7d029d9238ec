"""Test databases on the CI's PostgreSQL: dropping one reliably."""

from __future__ import annotations

import time

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

ATTEMPTS = 40


def drop_database(admin: Engine, name: str, *, if_exists: bool = True) -> None:
    """DROP DATABASE ... WITH (FORCE), retried: it refuses for a moment while an autovacuum
    worker is in the database (a superuser's session, which the test role may not terminate:
    "must be a member of the role whose process is being terminated"), which a test's many
    inserts may have started; seen failing a CI run's teardown."""
    exists = "IF EXISTS " if if_exists else ""
    for attempt in range(ATTEMPTS):
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE {exists}"{name}" WITH (FORCE)')
            return
        except DBAPIError:
            if attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.25)
