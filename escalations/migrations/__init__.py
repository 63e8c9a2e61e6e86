"""Alembic migrations of the database schema, shipped with the package (no alembic.ini).

``escalations.cases.schema`` runs them (``escalations db upgrade``); ``versions/`` holds one file per
revision. Revision 0001 is the schema of the last release before migrations (53cddc3), so a
database that release made can be stamped 0001 and upgraded like any other.

A new revision, after changing escalations/cases/models.py: upgrade a scratch database to head,
then let Alembic write the difference, and review it (types, server defaults for new NOT NULL
columns, SQLite batch operations)::

    from escalations.cases import schema
    from escalations.cases.store import make_engine
    engine = make_engine("sqlite:///scratch.sqlite3")
    schema.upgrade(engine)
    schema.write_revision(engine, "what changed")
"""
