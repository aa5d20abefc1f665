"""Alembic migrations of the feedback store (run by synthehr.app.store.upgrade at server start)."""
