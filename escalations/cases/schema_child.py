"""``python -m escalations.cases.schema_child``: create an empty database at the schema's head, for
:func:`escalations.cases.schema.create_in_child` (the service's first start on a new database), and exit.

The URL comes in :data:`~escalations.cases.schema.CHILD_URL_VARIABLE`. Exit 0: the database is at head
(made here, or by another process first); :data:`~escalations.cases.schema.CHILD_REFUSED` with one
sentence on stderr: a :class:`~escalations.cases.schema.SchemaError` (a database that is not empty and
not at head); 1 with the error's type and first line: anything else (the server unreachable...).
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    from escalations.cases import schema
    from escalations.cases.store import make_engine

    url = os.environ.pop(schema.CHILD_URL_VARIABLE, "")
    if not url:
        print(f"{schema.CHILD_URL_VARIABLE} is not set: this module is run by the service", file=sys.stderr)
        return 1
    engine = make_engine(url)
    try:
        schema.prepare(engine)
    except schema.SchemaError as exc:
        print(str(exc), file=sys.stderr)
        return schema.CHILD_REFUSED
    except Exception as exc:  # no traceback: the parent shows the last line in its one sentence
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"{type(exc).__name__}: {first}"[:500], file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
