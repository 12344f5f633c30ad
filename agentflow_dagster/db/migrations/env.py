"""Alembic environment: runs on the connection handed over by `agentflow_dagster.db.migrate`."""

from alembic import context
from sqlalchemy import create_engine

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        context.configure(connection=conn, version_table="agentflow_alembic_version")
        context.run_migrations()
else:
    context.configure(connection=connection, version_table="agentflow_alembic_version")
    context.run_migrations()
