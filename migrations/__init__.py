"""Alembic migrations of the mllm-monitor database (see ``monitor.store.migrate``)."""
