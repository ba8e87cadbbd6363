#!/usr/bin/env python3
"""Drive EddyDB with the real Python PostgreSQL clients: psycopg2, psycopg 3 and SQLAlchemy 2.

Usage: python3 tests/clients/python_drivers.py HOST PORT

Each driver connects as user `eddy` to database `eddy`, creates its own table with a column of
every supported type, inserts one row through bound parameters (one parameter per column) and
one row of NULLs, reads both back and asserts the Python values *and* their types exactly, then
runs a parameterised `SELECT ... WHERE id = %s`. What each driver sends on the wire:

* psycopg2: simple query protocol only; parameters are interpolated client side; the default
  non-autocommit mode sends BEGIN before the first statement and COMMIT/ROLLBACK.
* psycopg 3: no parameters => simple protocol; parameters => extended protocol with typed
  parameters (Parse/Bind/Describe portal/Execute/Sync); `prepare=True` => named statement
  `_pg3_n`; nested `conn.transaction()` => SAVEPOINT/RELEASE/ROLLBACK TO SAVEPOINT;
  `cursor(binary=True)` => every result column in binary format.
* SQLAlchemy 2 (psycopg2 and psycopg dialects): dialect initialisation runs
  `select pg_catalog.version()`, `select current_schema()`, `show transaction isolation level`,
  `show standard_conforming_strings` and the hstore / `to_regtype` probes; then `text()` queries
  with bound parameters; pool pre-ping `SELECT 1`.

Every driver section runs even if an earlier one failed; the script prints each check, then
exits 1 listing every failure (driver, step, query, error) or 0 when all passed.
"""

import datetime as dt
import sys
import traceback
import uuid
from decimal import Decimal

if len(sys.argv) != 3:
    sys.exit("usage: python_drivers.py HOST PORT")
HOST, PORT = sys.argv[1], int(sys.argv[2])

UTC = dt.timezone.utc

COLUMNS = ["id", "b", "i2", "i4", "i8", "f4", "f8", "n", "t", "v", "bt", "d", "tm", "ts", "tz", "j", "jb", "u"]
CREATE_COLUMNS = (
    "id INT, b BOOLEAN, i2 SMALLINT, i4 INT, i8 BIGINT, f4 REAL, f8 DOUBLE PRECISION, "
    "n NUMERIC(12,3), t TEXT, v VARCHAR(20), bt BYTEA, d DATE, tm TIME, ts TIMESTAMP, "
    "tz TIMESTAMPTZ, j JSON, jb JSONB, u UUID"
)
# PostgreSQL type OIDs the RowDescription must carry for each column.
OIDS = {
    "id": 23, "b": 16, "i2": 21, "i4": 23, "i8": 20, "f4": 700, "f8": 701, "n": 1700, "t": 25,
    "v": 1043, "bt": 17, "d": 1082, "tm": 1083, "ts": 1114, "tz": 1184, "j": 114, "jb": 3802,
    "u": 2950,
}

UUID_VALUE = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
ROW1 = {
    "id": 1,
    "b": True,
    "i2": 32767,
    "i4": -2147483648,
    "i8": 9223372036854775807,
    "f4": 1.5,
    "f8": -2.25,
    "n": Decimal("123456789.125"),
    "t": "h\u00e9llo 'quoted' \\ back",
    "v": "varchar",
    "bt": b"\x00\x01\xfe\xff",
    "d": dt.date(2024, 2, 29),
    "tm": dt.time(13, 14, 15, 123456),
    "ts": dt.datetime(2024, 2, 29, 13, 14, 15, 123456),
    "tz": dt.datetime(2024, 2, 29, 13, 14, 15, 123456, tzinfo=UTC),
    "j": {"a": 1, "b": [True, None]},
    "jb": {"k": "v", "n": [1, 2]},
    "u": UUID_VALUE,
}
ROW2 = {c: None for c in COLUMNS}
ROW2["id"] = 2

# Python types every driver returns, before the per-driver differences below.
BASE_TYPES = {
    "id": int, "b": bool, "i2": int, "i4": int, "i8": int, "f4": float, "f8": float, "n": Decimal,
    "t": str, "v": str, "d": dt.date, "tm": dt.time, "ts": dt.datetime, "tz": dt.datetime,
    "j": dict, "jb": dict,
}

FAILURES = []


class StepFailed(Exception):
    pass


class Section:
    """One driver's run: steps print what they check; a failed step ends the section."""

    def __init__(self, name):
        self.name = name
        self.step_name = None
        self.query = None
        self.mismatches = []

    def step(self, name, query=None):
        self.step_name = name
        self.query = query
        self.mismatches = []
        print(f"[{self.name}] {name}" + (f": {one_line(query)}" if query else ""), flush=True)

    def check(self, what, got, expected):
        if got != expected:
            self.mismatches.append(f"{what}: expected {expected!r}, got {got!r}")

    def done(self):
        """End the current step: mismatches fail it."""
        if self.mismatches:
            for m in self.mismatches:
                print(f"    MISMATCH {m}", flush=True)
            FAILURES.append((self.name, self.step_name, self.query, "\n".join(self.mismatches)))
            raise StepFailed()
        print("    ok", flush=True)

    def __enter__(self):
        print(f"=== {self.name}", flush=True)
        return self

    def __exit__(self, kind, error, tb):
        if kind is None:
            print(f"=== {self.name}: all checks passed", flush=True)
            return False
        if kind is not StepFailed:
            detail = f"{kind.__name__}: {error}"
            sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
            if sqlstate:
                detail += f" (SQLSTATE {sqlstate})"
            print(f"    ERROR {detail}", flush=True)
            traceback.print_exception(kind, error, tb, file=sys.stdout)
            FAILURES.append((self.name, self.step_name, self.query, detail))
        print(f"=== {self.name}: FAILED at step '{self.step_name}'", flush=True)
        return True  # go on with the next driver


def one_line(sql):
    return " ".join(str(sql).split())


def check_row(s, label, row, expected, types):
    """Compare one fetched row (a sequence in COLUMNS order) with `expected`."""
    s.check(f"{label}: column count", len(row), len(COLUMNS))
    for col, got in zip(COLUMNS, row):
        want = expected[col]
        if want is None:
            s.check(f"{label}.{col} (NULL)", got, None)
            continue
        want_type = types[col]
        if type(got) is not want_type:
            s.mismatches.append(
                f"{label}.{col}: expected Python type {want_type.__name__}, got {type(got).__name__} ({got!r})"
            )
            continue
        if isinstance(got, memoryview):
            got = bytes(got)
        if want_type is str and isinstance(want, uuid.UUID):
            want = str(want)
        s.check(f"{label}.{col}", got, want)
        if col == "n":
            s.check(f"{label}.n as text (scale 3)", str(got), "123456789.125")
        if col == "tz":
            s.check(f"{label}.tz has a time zone", got.tzinfo is not None, True)
            if got.tzinfo is not None:
                s.check(f"{label}.tz UTC offset (server TimeZone is UTC)", got.utcoffset(), dt.timedelta(0))


def check_description_oids(s, description):
    names = [d[0] for d in description]
    s.check("result column names", names, COLUMNS)
    oids = {d[0]: d[1] for d in description}
    for col in COLUMNS:
        s.check(f"type OID of column {col}", oids.get(col), OIDS[col])


def check_interval_and_array(s, cursor_execute_fetch):
    sql = "SELECT INTERVAL '1 day 2 hours'"
    s.step("interval result", sql)
    (value,) = cursor_execute_fetch(sql)
    s.check("interval type", type(value).__name__, "timedelta")
    s.check("interval value", value, dt.timedelta(days=1, hours=2))
    s.done()
    sql = "SELECT ARRAY[1,2,3]"
    s.step("one-dimensional array result", sql)
    (value,) = cursor_execute_fetch(sql)
    s.check("array type", type(value).__name__, "list")
    s.check("array value", value, [1, 2, 3])
    s.done()


# --------------------------------------------------------------------------------------------
# psycopg2


def run_psycopg2():
    import psycopg2
    import psycopg2.extensions as ext
    import psycopg2.extras

    table = "py_psycopg2_types"
    with Section(f"psycopg2 {psycopg2.__version__.split()[0]}") as s:
        s.step("connect (libpq; psycopg2 checks DateStyle, may send SET DATESTYLE)")
        conn = psycopg2.connect(host=HOST, port=PORT, user="eddy", dbname="eddy", connect_timeout=10)
        s.check("autocommit is off by default", conn.autocommit, False)
        s.check("server_version is PostgreSQL-like (>= 90000)", conn.server_version >= 90000, True)
        s.check("DateStyle", conn.get_parameter_status("DateStyle")[:3], "ISO")
        s.check("transaction status before any statement", conn.get_transaction_status(), ext.TRANSACTION_STATUS_IDLE)
        s.done()
        cur = conn.cursor()

        sql = f"DROP TABLE IF EXISTS {table}"
        s.step("BEGIN (implicit) + DROP TABLE IF EXISTS", sql)
        cur.execute(sql)
        s.check("transaction status after first statement (BEGIN was sent)",
                conn.get_transaction_status(), ext.TRANSACTION_STATUS_INTRANS)
        s.done()

        sql = f"CREATE TABLE {table} ({CREATE_COLUMNS})"
        s.step("CREATE TABLE with every type", sql)
        cur.execute(sql)
        s.done()

        s.step("COMMIT")
        conn.commit()
        s.check("transaction status after commit", conn.get_transaction_status(), ext.TRANSACTION_STATUS_IDLE)
        s.done()

        placeholders = ", ".join(["%s"] * len(COLUMNS))
        sql = f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({placeholders})"
        params = [ROW1[c] for c in COLUMNS]
        params[COLUMNS.index("bt")] = psycopg2.Binary(ROW1["bt"])
        params[COLUMNS.index("j")] = psycopg2.extras.Json(ROW1["j"])
        params[COLUMNS.index("jb")] = psycopg2.extras.Json(ROW1["jb"])
        params[COLUMNS.index("u")] = str(ROW1["u"])  # plain psycopg2 has no UUID adapter registered
        s.step("INSERT one row, client-side interpolated parameters", cur.mogrify(sql, params).decode())
        cur.execute(sql, params)
        s.check("rowcount", cur.rowcount, 1)
        s.done()

        sql = f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({placeholders})"
        params = [ROW2[c] for c in COLUMNS]
        s.step("INSERT a row of NULLs", cur.mogrify(sql, params).decode())
        cur.execute(sql, params)
        s.check("rowcount", cur.rowcount, 1)
        s.done()

        s.step("COMMIT")
        conn.commit()
        s.done()

        sql = f"SELECT {', '.join(COLUMNS)} FROM {table} ORDER BY id"
        s.step("read back both rows", sql)
        cur.execute(sql)
        rows = cur.fetchall()
        check_description_oids(s, cur.description)
        s.check("row count", len(rows), 2)
        types = dict(BASE_TYPES, bt=memoryview, u=str)
        if len(rows) == 2:
            check_row(s, "row 1", rows[0], ROW1, types)
            check_row(s, "row 2", rows[1], ROW2, types)
        s.done()

        sql = f"SELECT t, i8, n FROM {table} WHERE id = %s"
        s.step("parameterised SELECT ... WHERE id = %s", cur.mogrify(sql, (1,)).decode())
        cur.execute(sql, (1,))
        s.check("rows", cur.fetchall(), [(ROW1["t"], ROW1["i8"], ROW1["n"])])
        cur.execute(sql, (3,))
        s.check("rows for a missing id", cur.fetchall(), [])
        s.done()

        def fetch(q):
            cur.execute(q)
            return cur.fetchone()

        check_interval_and_array(s, fetch)

        sql = "SELECT * FROM py_no_such_table"
        s.step("error inside the transaction, then ROLLBACK", sql)
        try:
            cur.execute(sql)
            s.mismatches.append("query on a missing table did not fail")
        except psycopg2.Error as e:
            s.check("SQLSTATE", e.pgcode, "42P01")
            s.check("transaction status after error", conn.get_transaction_status(), ext.TRANSACTION_STATUS_INERROR)
        conn.rollback()
        s.check("transaction status after rollback", conn.get_transaction_status(), ext.TRANSACTION_STATUS_IDLE)
        cur.execute("SELECT count(*) FROM " + table)
        s.check("count(*) after rollback", cur.fetchone(), (2,))
        s.done()
        conn.commit()
        conn.close()


# --------------------------------------------------------------------------------------------
# psycopg 3


def run_psycopg3():
    import psycopg
    from psycopg.pq import TransactionStatus
    from psycopg.types import TypeInfo
    from psycopg.types.json import Json, Jsonb

    table = "py_psycopg3_types"
    with Section(f"psycopg {psycopg.__version__} (libpq {psycopg.pq.version()})") as s:
        s.step("connect")
        conn = psycopg.connect(host=HOST, port=PORT, user="eddy", dbname="eddy", connect_timeout=10)
        s.check("autocommit is off by default", conn.autocommit, False)
        s.check("server_version is PostgreSQL-like (>= 90000)", conn.info.server_version >= 90000, True)
        s.done()

        sql = f"DROP TABLE IF EXISTS {table}"
        s.step("BEGIN (implicit) + DROP TABLE IF EXISTS (simple protocol)", sql)
        conn.execute(sql)
        s.check("transaction status", conn.info.transaction_status, TransactionStatus.INTRANS)
        s.done()

        sql = f"CREATE TABLE {table} ({CREATE_COLUMNS})"
        s.step("CREATE TABLE with every type", sql)
        conn.execute(sql)
        conn.commit()
        s.check("transaction status after commit", conn.info.transaction_status, TransactionStatus.IDLE)
        s.done()

        placeholders = ", ".join(["%s"] * len(COLUMNS))
        sql = f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({placeholders})"
        params = [ROW1[c] for c in COLUMNS]
        params[COLUMNS.index("j")] = Json(ROW1["j"])
        params[COLUMNS.index("jb")] = Jsonb(ROW1["jb"])
        s.step("conn.execute(INSERT, params): extended protocol, typed server-side parameters", sql)
        cur = conn.execute(sql, params)
        s.check("rowcount", cur.rowcount, 1)
        s.done()

        params = [ROW2[c] for c in COLUMNS]
        s.step("conn.execute(INSERT, NULL params)", sql)
        cur = conn.execute(sql, params)
        s.check("rowcount", cur.rowcount, 1)
        conn.commit()
        s.done()

        types = dict(BASE_TYPES, bt=bytes, u=uuid.UUID)
        select = f"SELECT {', '.join(COLUMNS)} FROM {table} ORDER BY id"
        s.step("read back both rows (text results)", select)
        cur = conn.execute(select)
        rows = cur.fetchall()
        check_description_oids(s, [(d.name, d.type_code) for d in cur.description])
        s.check("row count", len(rows), 2)
        if len(rows) == 2:
            check_row(s, "row 1", rows[0], ROW1, types)
            check_row(s, "row 2", rows[1], ROW2, types)
        s.done()

        s.step("read back both rows with cursor(binary=True) (binary results)", select)
        bcur = conn.cursor(binary=True)
        bcur.execute(select)
        rows = bcur.fetchall()
        check_description_oids(s, [(d.name, d.type_code) for d in bcur.description])
        s.check("result formats are binary",
                [bcur.pgresult.fformat(i) for i in range(bcur.pgresult.nfields)], [1] * len(COLUMNS))
        s.check("row count", len(rows), 2)
        if len(rows) == 2:
            check_row(s, "row 1 (binary)", rows[0], ROW1, types)
            check_row(s, "row 2 (binary)", rows[1], ROW2, types)
        s.done()

        sql = f"SELECT t, i8, n FROM {table} WHERE id = %s"
        s.step("conn.execute(SELECT ... WHERE id = %s, params)", sql)
        s.check("rows", conn.execute(sql, (1,)).fetchall(), [(ROW1["t"], ROW1["i8"], ROW1["n"])])
        s.check("rows for a missing id", conn.execute(sql, (3,)).fetchall(), [])
        pcur = conn.cursor()
        pcur.execute(sql, (1,), binary=True)
        s.check("rows via cursor.execute(sql, params, binary=True)", pcur.fetchall(),
                [(ROW1["t"], ROW1["i8"], ROW1["n"])])
        s.check("result formats of cursor.execute(..., binary=True)",
                [pcur.pgresult.fformat(i) for i in range(pcur.pgresult.nfields)], [1, 1, 1])
        s.done()

        s.step("prepare=True: named server statement, run three times", sql)
        for i in range(3):
            got = conn.execute(sql, (1,), prepare=True).fetchall()
            s.check(f"run {i + 1}", got, [(ROW1["t"], ROW1["i8"], ROW1["n"])])
        s.check("run with another parameter", conn.execute(sql, (2,), prepare=True).fetchall(), [(None, None, None)])
        s.done()

        def fetch(q):
            return conn.execute(q).fetchone()

        check_interval_and_array(s, fetch)

        def fetch_binary(q):
            c = conn.cursor(binary=True)
            c.execute(q)
            return c.fetchone()

        s.step("binary interval and array results", "SELECT INTERVAL '1 day 2 hours', ARRAY[1,2,3]")
        s.check("interval (binary)", fetch_binary("SELECT INTERVAL '1 day 2 hours'"), (dt.timedelta(days=1, hours=2),))
        s.check("array (binary)", fetch_binary("SELECT ARRAY[1,2,3]"), ([1, 2, 3],))
        s.done()
        conn.commit()

        s.step("nested conn.transaction(): BEGIN, SAVEPOINT, RELEASE, ROLLBACK TO SAVEPOINT, COMMIT")
        with conn.transaction():
            s.check("status in outer block", conn.info.transaction_status, TransactionStatus.INTRANS)
            with conn.transaction():
                s.check("SELECT in a savepoint", conn.execute(f"SELECT count(*) FROM {table}").fetchone(), (2,))
            try:
                with conn.transaction():
                    conn.execute("SELECT * FROM py_no_such_table")
                s.mismatches.append("query on a missing table did not fail")
            except psycopg.Error as e:
                s.check("SQLSTATE of the failed statement", e.sqlstate, "42P01")
            s.check("status after ROLLBACK TO SAVEPOINT", conn.info.transaction_status, TransactionStatus.INTRANS)
            s.check("outer block usable after ROLLBACK TO SAVEPOINT",
                    conn.execute(f"SELECT i4 FROM {table} WHERE id = %s", (1,)).fetchone(), (ROW1["i4"],))
        s.check("status after the outer block (COMMIT)", conn.info.transaction_status, TransactionStatus.IDLE)
        s.done()

        s.step("TypeInfo.fetch probes (to_regtype($1), as SQLAlchemy's psycopg dialect does)")
        info = TypeInfo.fetch(conn, "int4")
        s.check("TypeInfo for int4 (oid, array_oid)", (info.oid, info.array_oid) if info else None, (23, 1007))
        s.check("TypeInfo for hstore (absent)", TypeInfo.fetch(conn, "hstore"), None)
        conn.commit()
        s.done()
        conn.close()


# --------------------------------------------------------------------------------------------
# SQLAlchemy


def run_sqlalchemy(dialect):
    import sqlalchemy
    from sqlalchemy import bindparam, create_engine, text
    from sqlalchemy.dialects.postgresql import JSON, JSONB

    table = f"py_sa_{dialect}_types"
    with Section(f"SQLAlchemy {sqlalchemy.__version__} postgresql+{dialect}") as s:
        s.step("create_engine + connect: dialect initialisation (version(), current_schema(), "
               "SHOW transaction isolation level, SHOW standard_conforming_strings, hstore probe)")
        engine = create_engine(f"postgresql+{dialect}://eddy@{HOST}:{PORT}/eddy", pool_pre_ping=True)
        with engine.connect() as conn:
            d = conn.dialect
            s.check("server_version_info parsed from version() (major >= 9)",
                    bool(d.server_version_info) and d.server_version_info[0] >= 9, True)
            print(f"    server_version_info = {d.server_version_info}")
            s.check("default_schema_name (current_schema())", d.default_schema_name, "public")
            s.check("default_isolation_level (SHOW transaction isolation level)", d.default_isolation_level,
                    "READ COMMITTED")
            s.check("standard_conforming_strings on => no backslash escapes", d._backslash_escapes, False)
            s.check("get_isolation_level", conn.get_isolation_level(), "READ COMMITTED")
            version = conn.execute(text("select pg_catalog.version()")).scalar()
            s.check("version() starts with 'PostgreSQL '", str(version).startswith("PostgreSQL "), True)
        s.done()

        s.step("pool pre-ping (SELECT 1) on the second checkout; DROP/CREATE TABLE")
        with engine.connect() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
            conn.execute(text(f"CREATE TABLE {table} ({CREATE_COLUMNS})"))
            conn.commit()
        s.done()

        insert = text(
            f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({', '.join(':' + c for c in COLUMNS)})"
        ).bindparams(
            # none_as_null: without it SQLAlchemy sends Python None as the JSON text 'null', not NULL.
            bindparam("j", type_=JSON(none_as_null=True)),
            bindparam("jb", type_=JSONB(none_as_null=True)),
        )
        s.step("text() INSERT with bound parameters (a row of values, a row of NULLs)", str(insert))
        with engine.connect() as conn:
            result = conn.execute(insert, ROW1)
            s.check("rowcount", result.rowcount, 1)
            result = conn.execute(insert, ROW2)
            s.check("rowcount (NULL row)", result.rowcount, 1)
            conn.commit()
        s.done()

        # SQLAlchemy registers UUID adapters: both dialects give uuid.UUID; bytea keeps the driver's type.
        types = dict(BASE_TYPES, bt=memoryview if dialect == "psycopg2" else bytes, u=uuid.UUID)
        select = text(f"SELECT {', '.join(COLUMNS)} FROM {table} ORDER BY id")
        s.step("text() SELECT both rows", str(select))
        with engine.connect() as conn:
            result = conn.execute(select)
            s.check("result keys", list(result.keys()), COLUMNS)
            rows = result.fetchall()
            s.check("row count", len(rows), 2)
            if len(rows) == 2:
                check_row(s, "row 1", tuple(rows[0]), ROW1, types)
                check_row(s, "row 2", tuple(rows[1]), ROW2, types)
            nulls = conn.execute(text(f"SELECT j IS NULL, jb IS NULL FROM {table} WHERE id = 2")).one()
            s.check("row 2 json/jsonb are SQL NULL (not JSON null)", tuple(nulls), (True, True))
        s.done()

        sql = text(f"SELECT t, i8, n FROM {table} WHERE id = :id")
        s.step("text() SELECT ... WHERE id = :id", str(sql))
        with engine.connect() as conn:
            s.check("rows", [tuple(r) for r in conn.execute(sql, {"id": 1})], [(ROW1["t"], ROW1["i8"], ROW1["n"])])
            s.check("rows for a missing id", [tuple(r) for r in conn.execute(sql, {"id": 3})], [])
            s.done()

            def fetch(q):
                return tuple(conn.execute(text(q)).one())

            check_interval_and_array(s, fetch)
        engine.dispose()


def main():
    print(f"Python client checks against {HOST}:{PORT}", flush=True)
    missing = []
    for module in ("psycopg2", "psycopg", "sqlalchemy"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        print(
            f"MISSING Python modules: {', '.join(missing)} "
            "(install: pip install psycopg2-binary 'psycopg[binary]' sqlalchemy)",
            file=sys.stderr,
        )
        sys.exit(3)
    run_psycopg2()
    run_psycopg3()
    run_sqlalchemy("psycopg2")
    run_sqlalchemy("psycopg")
    if FAILURES:
        print(f"\n{len(FAILURES)} FAILURE(S):", file=sys.stderr)
        for driver, step, query, detail in FAILURES:
            print(f"- {driver} | step: {step}", file=sys.stderr)
            if query:
                print(f"    query: {one_line(query)}", file=sys.stderr)
            for line in detail.splitlines():
                print(f"    {line}", file=sys.stderr)
        sys.exit(1)
    print("\nall Python client checks passed")


if __name__ == "__main__":
    main()
