"""`escalations db upgrade / current`: the schema."""

from __future__ import annotations

import logging

import typer
from sqlalchemy.exc import OperationalError

from escalations.cli.base import (
    JsonOpt,
    app,
    console,
    get_settings,
    print_json,
    schema_refused,
)
from escalations.logs import configure_logging
from escalations.private import make_private

db_app = typer.Typer(help="The database schema: upgrade it to this release, show its revision.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _unreachable(url: str, exc: OperationalError) -> Exception:
    from escalations.cases.schema import shown_url

    # the driver's own text may quote the server's reply: the exception type is enough to act on
    return Exception(f"cannot open the database at {shown_url(url)}: {type(exc.orig).__name__}")


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context) -> None:
    """Bring the database schema to this release (creating it in an empty database). Back up first."""
    from escalations.cases import schema
    from escalations.cases.store import make_engine

    configure_logging("console", logging.WARNING)
    settings = get_settings(ctx)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.effective_database_url
    engine = make_engine(url)
    try:
        result = schema.upgrade(engine)
    except schema.SchemaError as exc:
        schema_refused(exc)
    except OperationalError as exc:
        schema_refused(_unreachable(url, exc))
    finally:
        engine.dispose()
    make_private(settings.data_dir, settings.effective_database_url)
    if result.stamped:
        console.print(f"found tables made before migrations, with no recorded schema revision: they are "
                      f"revision {result.stamped}, recorded", highlight=False)
    if result.before == result.after:
        console.print(f"already at {result.after} (head)", highlight=False)
    else:
        console.print(f"upgraded {result.before or '(empty)'} -> {result.after} (head)", highlight=False)


@db_app.command("current")
def db_current(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Show the database's schema revision and whether it is this release's (exit 1 if not). Changes nothing."""
    from escalations.cases import schema
    from escalations.cases.store import make_engine

    url = get_settings(ctx).effective_database_url
    missing = schema.no_database(url)
    if not schema.database_exists(url):
        schema_refused(missing)
    engine = make_engine(url)
    try:
        st = schema.status(engine)
    except OperationalError as exc:
        schema_refused(_unreachable(url, exc))
    finally:
        engine.dispose()
    if st.state is schema.SchemaState.EMPTY:
        schema_refused(missing)
    if as_json:
        print_json({"revision": st.revision, "head": st.head, "state": st.state.value,
                     "is_head": st.state is schema.SchemaState.CURRENT})
    else:
        problem = schema.refusal(st, url)
        console.print(f"revision {st.revision or '(none)'}"
                      + (" (head)" if problem is None else f"; head is {st.head}: {problem}"),
                      markup=False, highlight=False, soft_wrap=True)
    if st.state is not schema.SchemaState.CURRENT:
        raise typer.Exit(1)

