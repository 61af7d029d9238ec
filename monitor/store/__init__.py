"""Storage: SQLAlchemy models, Alembic migrations, and the repository (the only SQL issuer).

``open_repository(settings)`` is the entry point; see :mod:`monitor.store.repository`.
"""

from monitor.store.repository import Repository, open_repository

__all__ = ["Repository", "open_repository"]
