"""Alembic environment for the feedback store.

Normally run programmatically by `synthehr.app.store.upgrade(engine)`, which hands over an open
connection in `config.attributes["connection"]`. Also usable from the alembic CLI with
`-x url=sqlite:///path/feedback.sqlite3` (or sqlalchemy.url in an ini file).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from synthehr.app.store import Base

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
