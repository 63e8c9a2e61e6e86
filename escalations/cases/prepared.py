"""Hot statements run on the DB-API cursor of the caller's connection, compiled once per dialect.

A Core statement through ``Connection.execute`` costs SQLAlchemy a cache-key walk, a compiled-cache
look-up, parameter construction and a result object each time: on the referral path that was most
of the database's share of the CPU, the database's own work a tenth of it. :class:`Prepared` does
that work once per dialect and keeps what SQLAlchemy would send: the compiled SQL, the order of its
parameters and each parameter's bind processor (so a datetime, a JSON value or a compressed column
is written exactly as ``Connection.execute`` would write it). Each execution is then the processors
and one ``cursor.execute``.

It runs inside the caller's transaction: the connection is the session's (``Session.connection()``)
or a ``Store.transaction()``'s, begun by SQLAlchemy, so BEGIN IMMEDIATE and the write lock of
:mod:`escalations.cases.engine` are taken as for any other statement. A driver error is raised as
SQLAlchemy's wrapper of it (``IntegrityError``, ``OperationalError`` ...), parameters hidden, as
``Connection.execute`` raises it, and a lost connection is invalidated. The engine's
``before_cursor_execute`` and ``after_cursor_execute`` listeners see each statement (with no
execution context).

Only what can be prepared once is accepted: a statement with an expanding ``IN``, a literal-execute
parameter, a bind computed at execution, or a column default that SQLAlchemy would compute in Python
is refused when first compiled (the caller passes every column), never run differently.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import ClauseElement

__all__ = ["Prepared", "dialect_insert", "run_driver_sql"]

_MISSING = object()


def dialect_insert(dialect: str) -> Any:
    """The dialect's INSERT (the one with ON CONFLICT), imported when first needed: PostgreSQL's dialect
    package costs an SQLite installation ~2 MiB and ~50 ms, and read-only commands need neither."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


@dataclass
class _Plan:
    sql: str
    positional: bool
    #: (name the driver is given it under, name the caller gives it, fixed value or _MISSING, processor)
    params: tuple[tuple[str, str, Any, Callable[[Any], Any] | None], ...]
    #: A SELECT's (or RETURNING's) column types, and their result processors once a cursor has said
    #: what the driver returns (SQLAlchemy asks with the cursor's type codes too).
    result_types: tuple[Any, ...] = ()
    result_processors: list[Callable[[Any], Any] | None] | None = None


class Prepared:
    """One statement, compiled for each dialect it is run on.

    ``statement``: the statement, or a function of the dialect's name that makes it (an INSERT ... ON
    CONFLICT is each dialect's own). ``columns``: for an INSERT, the columns the caller gives (all but
    those the database fills in); for other statements leave it out. Parameters are given by their
    bind names, as to ``Connection.execute``.
    """

    def __init__(self, statement: ClauseElement | Callable[[str], ClauseElement],
                 columns: Sequence[str] | None = None) -> None:
        self._statement = statement
        self._columns = list(columns) if columns is not None else None
        self._plans: dict[tuple[str, bool], _Plan] = {}
        self._guard = threading.Lock()

    def _plan(self, dialect: Dialect, many: bool) -> _Plan:
        plan = self._plans.get((dialect.name, many))
        if plan is None:
            with self._guard:
                plan = self._plans.get((dialect.name, many)) or self._compile(dialect, many)
                self._plans[dialect.name, many] = plan
        return plan

    def _compile(self, dialect: Dialect, many: bool) -> _Plan:
        # for_executemany: PostgreSQL's INSERT run once returns its new key unasked; run for many rows, not
        kw: dict[str, Any] = {"for_executemany": many}
        if self._columns is not None:
            kw["column_keys"] = self._columns
        statement = self._statement if isinstance(self._statement, ClauseElement) else self._statement(dialect.name)
        compiled: Any = statement.compile(dialect=dialect, **kw)
        problems = [what for what, there in (
            ("a column default computed in Python", compiled.insert_prefetch or compiled.update_prefetch),
            ("an expanding or literal-execute parameter", compiled.post_compile_params or compiled.literal_execute_params),
        ) if there]
        if problems:
            raise TypeError(f"cannot prepare {statement}: it has {', '.join(problems)}")
        positional = bool(compiled.positional)
        names = list(compiled.positiontup) if positional else list(compiled.bind_names.values())
        escaped = compiled.escaped_bind_names or {}
        processors = compiled._bind_processors
        params = []
        for name in dict.fromkeys(names):
            bind = compiled.binds[name]
            if bind.callable is not None:
                raise TypeError(f"cannot prepare {statement}: its parameter {name} is computed at execution")
            fixed = _MISSING if bind.required else bind.value
            params.append((escaped.get(name, name), name, fixed, processors.get(name)))
        if positional:  # a name used twice is sent twice, in its places
            by_name = {p[1]: p for p in params}
            params = [by_name[n] for n in names]
        return _Plan(compiled.string, positional, tuple(params),
                     tuple(c.type for c in getattr(compiled, "_result_columns", None) or ()))

    @staticmethod
    def _values(plan: _Plan, given: Mapping[str, Any]) -> Any:
        out = []
        for _driver_name, name, fixed, process in plan.params:
            value = given.get(name, fixed)
            if value is _MISSING:
                raise exc.ArgumentError(f"a value is required for the parameter {name!r}")
            out.append(process(value) if process is not None and value is not None else value)
        if plan.positional:
            return tuple(out)
        return {p[0]: v for p, v in zip(plan.params, out, strict=True)}

    def execute(self, conn: Connection, params: Mapping[str, Any] | None = None) -> Any:
        """Run it once; returns the DB-API cursor (``fetchone()``, ``fetchall()``, ``rowcount``)."""
        plan = self._plan(conn.dialect, False)
        values = self._values(plan, params or {})
        return _run(conn, plan.sql, values, False, lambda cursor: cursor.execute(plan.sql, values))

    def first(self, conn: Connection, params: Mapping[str, Any] | None = None) -> tuple[Any, ...] | None:
        """Run a SELECT once; its first row with each column as SQLAlchemy would return it (a UTC
        datetime, a decoded JSON value, decompressed bytes), or None."""
        rows = self._rows(conn, params, one=True)
        return rows[0] if rows else None

    def all(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a SELECT (or a statement with RETURNING) once; every row, each column as SQLAlchemy would
        return it."""
        return self._rows(conn, params, one=False)

    def _rows(self, conn: Connection, params: Mapping[str, Any] | None, *, one: bool) -> list[tuple[Any, ...]]:
        plan = self._plan(conn.dialect, False)
        cursor = self.execute(conn, params)
        rows = [r for r in [cursor.fetchone()] if r is not None] if one else cursor.fetchall()
        processors = plan.result_processors
        if processors is None:
            codes = [d[1] for d in cursor.description or ()]
            processors = [t._cached_result_processor(conn.dialect, code) for t, code in zip(plan.result_types, codes, strict=True)]
            plan.result_processors = processors
        cursor.close()
        if all(p is None for p in processors):
            return [tuple(row) for row in rows]
        return [tuple(v if p is None or v is None else p(v) for p, v in zip(processors, row, strict=True))
                for row in rows]

    def executemany(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> int:
        """Run it for each row (no RETURNING); returns the rows the database says it changed."""
        plan = self._plan(conn.dialect, True)
        values = [self._values(plan, r) for r in rows]
        if not values:
            return 0
        cursor = _run(conn, plan.sql, values, True, lambda c: c.executemany(plan.sql, values))
        return max(int(cursor.rowcount or 0), 0)


def run_driver_sql(conn: Connection, sql: str) -> None:
    """A statement with no parameters (BEGIN IMMEDIATE) on the connection's DB-API cursor, errors and
    cursor events as for :class:`Prepared`."""
    _run(conn, sql, (), False, lambda cursor: cursor.execute(sql), begin=False)  # it is the BEGIN


def _run(conn: Connection, sql: str, values: Any, many: bool, call: Callable[[Any], Any], *,
         begin: bool = True) -> Any:
    if begin and not conn.in_transaction():
        conn.begin()  # as Connection.execute would (autobegin): BEGIN, or BEGIN IMMEDIATE for a writer
    dialect = conn.dialect
    dbapi_conn = conn.connection.dbapi_connection
    assert dbapi_conn is not None  # a live connection (Session.connection() or Store.transaction())
    cursor = dbapi_conn.cursor()
    # SQLAlchemy's cursor events, as Connection.execute fires them (statement counting, tracing); there
    # is no execution context to give them.
    events = conn.dispatch
    try:
        if events.before_cursor_execute:
            events.before_cursor_execute(conn, cursor, sql, values, None, many)
        call(cursor)
        if events.after_cursor_execute:
            events.after_cursor_execute(conn, cursor, sql, values, None, many)
    except dialect.loaded_dbapi.Error as e:
        disconnect = dialect.is_disconnect(e, dbapi_conn, cursor)
        with contextlib.suppress(Exception):
            cursor.close()
        if disconnect:
            conn.invalidate(e)
        raise exc.DBAPIError.instance(sql, values, e, dialect.loaded_dbapi.Error, hide_parameters=True,
                                      dialect=dialect, connection_invalidated=disconnect) from e
    return cursor
