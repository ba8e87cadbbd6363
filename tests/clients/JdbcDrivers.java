// Drive EddyDB with pgjdbc, the PostgreSQL JDBC driver (Debian's libpostgresql-jdbc-java).
//
// Usage (Java 17):
//   javac -cp /usr/share/java/postgresql.jar -d DIR tests/clients/JdbcDrivers.java
//   java -Duser.timezone=UTC -cp DIR:/usr/share/java/postgresql.jar JdbcDrivers HOST PORT
//
// Connects as user `eddy` to database `eddy` with `prepareThreshold=1`, so every
// PreparedStatement becomes a named server-side statement (S_1, S_2, ...) on its first execution
// and is then re-bound without a new Parse; once named, pgjdbc asks for *binary* results for the
// types it can decode in binary (ints, floats, numeric, bytea, date, time, timestamp(tz), uuid).
// Checked: PreparedStatement setters of every type (setNull too), getters of every type,
// ResultSetMetaData type names / JDBC types / precision and scale, DatabaseMetaData.getTables /
// getColumns / getSchemas / getPrimaryKeys (what DBeaver-like tools call), batches, transactions
// and SQLSTATEs.
//
// Every step runs even if an earlier one failed; the program prints each check, then exits 1
// listing every failure, or 0 when all passed.

import java.math.BigDecimal;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.Date;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Time;
import java.sql.Timestamp;
import java.sql.Types;
import java.time.LocalDate;
import java.time.LocalDateTime;
import java.time.LocalTime;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;
import java.util.UUID;

public class JdbcDrivers {
    interface Body {
        void run() throws Exception;
    }

    static final List<String> FAILURES = new ArrayList<>();
    static final List<String> GAPS = new ArrayList<>();
    static String stepName;
    static String stepQuery;
    static List<String> mismatches = new ArrayList<>();

    static final String TABLE = "jdbc_types";
    static final String[] COLUMNS = {
        "id", "b", "i2", "i4", "i8", "f4", "f8", "n", "t", "v", "bt", "d", "tm", "ts", "tz", "j", "jb", "u"
    };
    static final String CREATE_COLUMNS =
            "id INT, b BOOLEAN, i2 SMALLINT, i4 INT, i8 BIGINT, f4 REAL, f8 DOUBLE PRECISION, "
                    + "n NUMERIC(12,3), t TEXT, v VARCHAR(20), bt BYTEA, d DATE, tm TIME, ts TIMESTAMP, "
                    + "tz TIMESTAMPTZ, j JSON, jb JSONB, u UUID";
    // ResultSetMetaData.getColumnTypeName: the pg_type.typname of each column.
    static final String[] TYPE_NAMES = {
        "int4", "bool", "int2", "int4", "int8", "float4", "float8", "numeric", "text", "varchar", "bytea",
        "date", "time", "timestamp", "timestamptz", "json", "jsonb", "uuid"
    };
    // ResultSetMetaData.getColumnType: pgjdbc's java.sql.Types for each type.
    static final int[] JDBC_TYPES = {
        Types.INTEGER, Types.BIT, Types.SMALLINT, Types.INTEGER, Types.BIGINT, Types.REAL, Types.DOUBLE,
        Types.NUMERIC, Types.VARCHAR, Types.VARCHAR, Types.BINARY, Types.DATE, Types.TIME, Types.TIMESTAMP,
        Types.TIMESTAMP, Types.OTHER, Types.OTHER, Types.OTHER
    };

    static final UUID UUID_VALUE = UUID.fromString("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    static final String TEXT_VALUE = "h\u00e9llo 'quoted' \\ back";
    static final byte[] BYTES = {0x00, 0x01, (byte) 0xfe, (byte) 0xff};
    static final BigDecimal NUMERIC = new BigDecimal("123456789.125");
    static final LocalDate DATE = LocalDate.of(2024, 2, 29);
    static final LocalTime TIME = LocalTime.of(13, 14, 15, 123_456_000);
    static final LocalDateTime TIMESTAMP = LocalDateTime.of(2024, 2, 29, 13, 14, 15, 123_456_000);
    static final OffsetDateTime TIMESTAMPTZ = OffsetDateTime.of(TIMESTAMP, ZoneOffset.UTC);

    static void step(String name, String query) {
        stepName = name;
        stepQuery = query;
        mismatches = new ArrayList<>();
        System.out.println("[pgjdbc] " + name + (query == null ? "" : ": " + oneLine(query)));
    }

    static String oneLine(String sql) {
        return String.join(" ", sql.trim().split("\\s+"));
    }

    static String show(Object v) {
        if (v instanceof byte[]) {
            return "bytes" + Arrays.toString((byte[]) v);
        }
        if (v instanceof int[]) {
            return Arrays.toString((int[]) v);
        }
        if (v instanceof Object[]) {
            return Arrays.deepToString((Object[]) v);
        }
        return v == null ? "null" : v + " (" + v.getClass().getSimpleName() + ")";
    }

    static void check(String what, Object got, Object want) {
        boolean same = (got instanceof byte[] && want instanceof byte[])
                ? Arrays.equals((byte[]) got, (byte[]) want)
                : (got instanceof Object[] && want instanceof Object[])
                        ? Arrays.deepEquals((Object[]) got, (Object[]) want)
                        : Objects.equals(got, want);
        if (!same) {
            mismatches.add(what + ": expected " + show(want) + ", got " + show(got));
        }
    }

    /**
     * A known difference from PostgreSQL that EddyDB does not close yet: printed and listed at the
     * end, but not a failure. `pgWant` is what PostgreSQL gives.
     */
    static void gap(String what, Object got, Object pgWant) {
        String line = stepName + ": " + what + ": PostgreSQL gives " + show(pgWant) + ", EddyDB " + show(got);
        if (!Objects.equals(got, pgWant) && !GAPS.contains(line)) {
            System.out.println("    KNOWN GAP " + line);
            GAPS.add(line);
        }
    }

    static void run(String name, String query, Body body) {
        step(name, query);
        try {
            body.run();
        } catch (Exception e) {
            String detail = e.getClass().getSimpleName() + ": " + e.getMessage();
            if (e instanceof SQLException && ((SQLException) e).getSQLState() != null) {
                detail += " (SQLSTATE " + ((SQLException) e).getSQLState() + ")";
            }
            mismatches.add("ERROR " + detail);
            e.printStackTrace(System.out);
        }
        if (mismatches.isEmpty()) {
            System.out.println("    ok");
        } else {
            for (String m : mismatches) {
                System.out.println("    MISMATCH " + m);
            }
            FAILURES.add("- pgjdbc | step: " + stepName
                    + (stepQuery == null ? "" : "\n    query: " + oneLine(stepQuery))
                    + "\n    " + String.join("\n    ", mismatches));
        }
    }

    /** A JSON parameter: pgjdbc sends a PGobject with its type's OID (looked up in pg_type). */
    static Object pgObject(String type, String value) throws SQLException {
        org.postgresql.util.PGobject o = new org.postgresql.util.PGobject();
        o.setType(type);
        o.setValue(value);
        return o;
    }

    static void checkRow1(String label, ResultSet rs) throws SQLException {
        check(label + ".id getInt", rs.getInt("id"), 1);
        check(label + ".b getBoolean", rs.getBoolean("b"), true);
        check(label + ".i2 getShort", rs.getShort("i2"), (short) 32767);
        check(label + ".i4 getInt", rs.getInt("i4"), -2147483648);
        check(label + ".i8 getLong", rs.getLong("i8"), 9223372036854775807L);
        check(label + ".f4 getFloat", rs.getFloat("f4"), 1.5f);
        check(label + ".f8 getDouble", rs.getDouble("f8"), -2.25);
        check(label + ".n getBigDecimal", rs.getBigDecimal("n"), NUMERIC);
        check(label + ".n scale", rs.getBigDecimal("n").scale(), 3);
        check(label + ".t getString", rs.getString("t"), TEXT_VALUE);
        check(label + ".v getString", rs.getString("v"), "varchar");
        check(label + ".bt getBytes", rs.getBytes("bt"), BYTES);
        check(label + ".d getDate", rs.getDate("d"), Date.valueOf(DATE));
        check(label + ".d getObject(LocalDate)", rs.getObject("d", LocalDate.class), DATE);
        // java.sql.Time keeps milliseconds: 13:14:15.123.
        check(label + ".tm getTime", rs.getTime("tm"), new Time(Time.valueOf(LocalTime.of(13, 14, 15)).getTime() + 123));
        check(label + ".tm getObject(LocalTime)", rs.getObject("tm", LocalTime.class), TIME);
        check(label + ".ts getTimestamp", rs.getTimestamp("ts"), Timestamp.valueOf(TIMESTAMP));
        check(label + ".ts getObject(LocalDateTime)", rs.getObject("ts", LocalDateTime.class), TIMESTAMP);
        check(label + ".tz getTimestamp", rs.getTimestamp("tz"), Timestamp.from(TIMESTAMPTZ.toInstant()));
        check(label + ".tz getObject(OffsetDateTime)", rs.getObject("tz", OffsetDateTime.class), TIMESTAMPTZ);
        check(label + ".j getString", rs.getString("j"), "{\"a\": 1, \"b\": [true, null]}");
        Object j = rs.getObject("j");
        check(label + ".j getObject class", j == null ? null : j.getClass().getName(), "org.postgresql.util.PGobject");
        check(label + ".jb getString", rs.getString("jb"), "{\"k\": \"v\", \"n\": [1, 2]}");
        check(label + ".u getObject", rs.getObject("u"), UUID_VALUE);
        check(label + ".u getObject(UUID)", rs.getObject("u", UUID.class), UUID_VALUE);
        check(label + ".u getString", rs.getString("u"), UUID_VALUE.toString());
        // getObject without a class: the JDBC default Java type of each column.
        check(label + ".b getObject", rs.getObject("b"), Boolean.TRUE);
        check(label + ".i2 getObject", rs.getObject("i2"), 32767);
        check(label + ".i8 getObject", rs.getObject("i8"), 9223372036854775807L);
        check(label + ".f4 getObject", rs.getObject("f4"), 1.5f);
        check(label + ".n getObject", rs.getObject("n"), NUMERIC);
        check(label + ".bt getObject", rs.getObject("bt"), BYTES);
    }

    static void checkNullRow(String label, ResultSet rs) throws SQLException {
        check(label + ".id", rs.getInt("id"), 2);
        for (int i = 2; i <= COLUMNS.length; i++) {
            Object o = rs.getObject(i);
            check(label + "." + COLUMNS[i - 1] + " getObject (NULL)", o, null);
            check(label + "." + COLUMNS[i - 1] + " wasNull", rs.wasNull(), true);
        }
        check(label + ".i4 getInt of NULL", rs.getInt("i4"), 0);
        check(label + ".b getBoolean of NULL", rs.getBoolean("b"), false);
        check(label + ".t getString of NULL", rs.getString("t"), null);
    }

    static void checkMetaData(ResultSetMetaData md) throws SQLException {
        check("column count", md.getColumnCount(), COLUMNS.length);
        for (int i = 1; i <= Math.min(md.getColumnCount(), COLUMNS.length); i++) {
            String c = COLUMNS[i - 1];
            check("getColumnName(" + i + ")", md.getColumnName(i), c);
            check("getColumnLabel(" + i + ")", md.getColumnLabel(i), c);
            check("getColumnTypeName(" + c + ")", md.getColumnTypeName(i), TYPE_NAMES[i - 1]);
            check("getColumnType(" + c + ")", md.getColumnType(i), JDBC_TYPES[i - 1]);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: java JdbcDrivers HOST PORT");
            System.exit(2);
        }
        String url = "jdbc:postgresql://" + args[0] + ":" + args[1] + "/eddy?user=eddy&prepareThreshold=1"
                + "&connectTimeout=10&socketTimeout=60";
        System.out.println("pgjdbc against " + url + " (Java " + System.getProperty("java.version")
                + ", user.timezone " + System.getProperty("user.timezone") + ")");

        Connection[] holder = new Connection[1];
        run("connect; DatabaseMetaData product name and version", null, () -> {
            holder[0] = DriverManager.getConnection(url);
            DatabaseMetaData md = holder[0].getMetaData();
            System.out.println("    driver " + md.getDriverVersion() + ", server " + md.getDatabaseProductVersion());
            check("getDatabaseProductName", md.getDatabaseProductName(), "PostgreSQL");
            check("getDatabaseMajorVersion >= 9", md.getDatabaseMajorVersion() >= 9, true);
            check("autocommit by default", holder[0].getAutoCommit(), true);
            check("transaction isolation", holder[0].getTransactionIsolation(), Connection.TRANSACTION_READ_COMMITTED);
            check("getSchema (current_schema())", holder[0].getSchema(), "public");
            check("getCatalog", holder[0].getCatalog(), "eddy");
        });
        Connection conn = holder[0];
        if (conn == null) {
            finish();
            return;
        }

        String create = "CREATE TABLE " + TABLE + " (" + CREATE_COLUMNS + ")";
        run("Statement: DROP TABLE IF EXISTS, CREATE TABLE with every type", create, () -> {
            try (Statement st = conn.createStatement()) {
                st.execute("DROP TABLE IF EXISTS " + TABLE);
                check("executeUpdate(CREATE TABLE)", st.executeUpdate(create), 0);
            }
        });

        String insert = "INSERT INTO " + TABLE + " (" + String.join(", ", COLUMNS) + ") VALUES ("
                + String.join(", ", java.util.Collections.nCopies(COLUMNS.length, "?")) + ")";
        run("PreparedStatement INSERT with a setter of every type", insert, () -> {
            try (PreparedStatement ps = conn.prepareStatement(insert)) {
                ps.setInt(1, 1);
                ps.setBoolean(2, true);
                ps.setShort(3, (short) 32767);
                ps.setInt(4, -2147483648);
                ps.setLong(5, 9223372036854775807L);
                ps.setFloat(6, 1.5f);
                ps.setDouble(7, -2.25);
                ps.setBigDecimal(8, NUMERIC);
                ps.setString(9, TEXT_VALUE);
                ps.setString(10, "varchar");
                ps.setBytes(11, BYTES);
                ps.setDate(12, Date.valueOf(DATE)); // sent untyped as '2024-02-29 +00'
                ps.setTime(13, Time.valueOf(LocalTime.of(13, 14, 15))); // untyped '13:14:15+00'
                ps.setTimestamp(14, Timestamp.valueOf(TIMESTAMP)); // untyped '... 13:14:15.123456+00'
                ps.setObject(15, TIMESTAMPTZ); // timestamptz
                ps.setObject(16, pgObject("json", "{\"a\": 1, \"b\": [true, null]}"));
                ps.setObject(17, "{\"k\": \"v\", \"n\": [1, 2]}", Types.OTHER); // untyped
                ps.setObject(18, UUID_VALUE); // uuid, binary
                check("executeUpdate", ps.executeUpdate(), 1);
            }
            // setTime loses the fraction (java.sql.Time has milliseconds at most): fix tm up with
            // setObject(LocalTime), which keeps microseconds.
            try (PreparedStatement ps = conn.prepareStatement("UPDATE " + TABLE + " SET tm = ? WHERE id = ?")) {
                ps.setObject(1, TIME);
                ps.setInt(2, 1);
                check("UPDATE tm = setObject(LocalTime)", ps.executeUpdate(), 1);
            }
        });

        run("PreparedStatement INSERT of NULLs with setNull(java.sql.Types) / setObject(null)", insert, () -> {
            int[] types = {
                Types.INTEGER, Types.BOOLEAN, Types.SMALLINT, Types.INTEGER, Types.BIGINT, Types.REAL, Types.DOUBLE,
                Types.NUMERIC, Types.VARCHAR, Types.VARCHAR, Types.BINARY, Types.DATE, Types.TIME, Types.TIMESTAMP,
                Types.TIMESTAMP_WITH_TIMEZONE, Types.OTHER, Types.OTHER, Types.OTHER
            };
            try (PreparedStatement ps = conn.prepareStatement(insert)) {
                ps.setInt(1, 2);
                for (int i = 2; i <= COLUMNS.length; i++) {
                    if (i == 9) {
                        ps.setString(i, null);
                    } else if (i == 18) {
                        ps.setObject(i, null);
                    } else {
                        ps.setNull(i, types[i - 1]);
                    }
                }
                check("executeUpdate", ps.executeUpdate(), 1);
            }
        });

        String select = "SELECT " + String.join(", ", COLUMNS) + " FROM " + TABLE + " WHERE id < 3 ORDER BY id";
        run("Statement SELECT (simple protocol): every getter, ResultSetMetaData", select, () -> {
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(select)) {
                checkMetaData(rs.getMetaData());
                check("row 1 present", rs.next(), true);
                checkRow1("row 1", rs);
                check("row 2 present", rs.next(), true);
                checkNullRow("row 2", rs);
                check("no row 3", rs.next(), false);
            }
        });

        run("ResultSetMetaData precision/scale/nullability (typmod, table OID and column number)", select, () -> {
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(select)) {
                ResultSetMetaData md = rs.getMetaData();
                check("numeric(12,3) getPrecision", md.getPrecision(8), 12);
                check("numeric(12,3) getScale", md.getScale(8), 3);
                check("int4 getPrecision", md.getPrecision(4), 10);
                // The RowDescription carries no typmod for varchar(n) and no table OID / column
                // number, so pgjdbc cannot look up the base table and nullability.
                gap("varchar(20) getPrecision (typmod)", md.getPrecision(10), 20);
                gap("getTableName (RowDescription table OID)", md.getTableName(1), TABLE);
                gap("isNullable (RowDescription table OID)", md.isNullable(2), ResultSetMetaData.columnNullable);
            }
        });

        String byId = "SELECT " + String.join(", ", COLUMNS) + " FROM " + TABLE + " WHERE id = ?";
        run("prepareThreshold=1: one PreparedStatement executed 4 times (named statement, binary results)", byId, () -> {
            try (PreparedStatement ps = conn.prepareStatement(byId)) {
                for (int i = 1; i <= 4; i++) {
                    int id = i == 3 ? 2 : 1;
                    ps.setInt(1, id);
                    try (ResultSet rs = ps.executeQuery()) {
                        if (i == 1) {
                            checkMetaData(rs.getMetaData());
                        }
                        check("run " + i + ": a row", rs.next(), true);
                        if (id == 1) {
                            checkRow1("run " + i, rs);
                        } else {
                            checkNullRow("run " + i, rs);
                        }
                        check("run " + i + ": one row only", rs.next(), false);
                    }
                    org.postgresql.PGStatement pgs = ps.unwrap(org.postgresql.PGStatement.class);
                    check("run " + i + ": isUseServerPrepare", pgs.isUseServerPrepare(), true);
                }
                ps.setInt(1, 3);
                try (ResultSet rs = ps.executeQuery()) {
                    check("missing id: no row", rs.next(), false);
                }
            }
        });

        String small = "SELECT t, i8, n FROM " + TABLE + " WHERE id = ?";
        run("two PreparedStatements of the same SQL, interleaved (statement cache)", small, () -> {
            try (PreparedStatement a = conn.prepareStatement(small); PreparedStatement b = conn.prepareStatement(small)) {
                for (int i = 0; i < 3; i++) {
                    a.setInt(1, 1);
                    b.setLong(1, 2L);
                    try (ResultSet ra = a.executeQuery(); ResultSet rb = b.executeQuery()) {
                        check("a: row", ra.next(), true);
                        check("a: t", ra.getString(1), TEXT_VALUE);
                        check("a: i8", ra.getLong(2), 9223372036854775807L);
                        check("a: n", ra.getBigDecimal(3), NUMERIC);
                        check("b: row", rb.next(), true);
                        check("b: t", rb.getString(1), null);
                    }
                }
            }
        });

        String typed = "SELECT ?::int4 + 1, ?::text || 'x', ?::numeric * 2, ?::date, ?::bytea, ?::uuid";
        run("typed parameters in expressions, run 3 times", typed, () -> {
            try (PreparedStatement ps = conn.prepareStatement(typed)) {
                for (int i = 0; i < 3; i++) {
                    ps.setInt(1, 41);
                    ps.setString(2, "ab");
                    ps.setBigDecimal(3, new BigDecimal("1.25"));
                    ps.setObject(4, DATE);
                    ps.setBytes(5, BYTES);
                    ps.setObject(6, UUID_VALUE);
                    try (ResultSet rs = ps.executeQuery()) {
                        check("row", rs.next(), true);
                        check("int4 + 1", rs.getLong(1), 42L);
                        check("text || 'x'", rs.getString(2), "abx");
                        check("numeric * 2", rs.getBigDecimal(3).compareTo(new BigDecimal("2.5")), 0);
                        check("date", rs.getObject(4, LocalDate.class), DATE);
                        check("bytea", rs.getBytes(5), BYTES);
                        check("uuid getString", rs.getString(6), UUID_VALUE.toString());
                        check("?::uuid result type", rs.getMetaData().getColumnTypeName(6), "uuid");
                    }
                }
            }
        });

        run("arrays: int8[] and text[] (getArray)", "SELECT ARRAY[1,2]::int8[], ARRAY['a','b']::text[]", () -> {
            try (PreparedStatement ps = conn.prepareStatement("SELECT ARRAY[1,2]::int8[], ARRAY['a','b']::text[]")) {
                for (int i = 0; i < 3; i++) {
                    try (ResultSet rs = ps.executeQuery()) {
                        check("row", rs.next(), true);
                        check("int8[] type name", rs.getMetaData().getColumnTypeName(1), "_int8");
                        check("int8[] JDBC type", rs.getMetaData().getColumnType(1), Types.ARRAY);
                        check("int8[] getArray", rs.getArray(1).getArray(), new Long[] {1L, 2L});
                        check("text[] getArray", rs.getArray(2).getArray(), new String[] {"a", "b"});
                        // No getString here: once results come in binary (from the second run
                        // on), pgjdbc renders arrays itself, quoting text elements: {"a","b"}.
                    }
                }
            }
        });

        run("arrays as text (simple protocol): getString, getArray", "SELECT ARRAY['a','b c']::text[], ARRAY[1,2]::int8[]", () -> {
            try (Statement st = conn.createStatement();
                    ResultSet rs = st.executeQuery("SELECT ARRAY['a','b c']::text[], ARRAY[1,2]::int8[]")) {
                check("row", rs.next(), true);
                check("text[] getString", rs.getString(1), "{a,\"b c\"}");
                check("text[] getArray", rs.getArray(1).getArray(), new String[] {"a", "b c"});
                check("int8[] getString", rs.getString(2), "{1,2}");
                check("int8[] getArray", rs.getArray(2).getArray(), new Long[] {1L, 2L});
            }
        });

        run("executeBatch: 3 INSERTs in one round trip", "INSERT INTO " + TABLE + " (id, t) VALUES (?, ?)", () -> {
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO " + TABLE + " (id, t) VALUES (?, ?)")) {
                for (int id = 10; id < 13; id++) {
                    ps.setInt(1, id);
                    ps.setString(2, "batch " + id);
                    ps.addBatch();
                }
                int[] counts = ps.executeBatch();
                check("update counts", Arrays.toString(counts), "[1, 1, 1]");
            }
            try (Statement st = conn.createStatement();
                    ResultSet rs = st.executeQuery("SELECT count(*) FROM " + TABLE + " WHERE id >= 10")) {
                rs.next();
                check("count(*)", rs.getLong(1), 3L);
            }
        });

        run("executeUpdate counts of UPDATE and DELETE (PreparedStatement, 3 runs each)", null, () -> {
            try (PreparedStatement up = conn.prepareStatement("UPDATE " + TABLE + " SET t = ? WHERE id >= ?");
                    PreparedStatement del = conn.prepareStatement("DELETE FROM " + TABLE + " WHERE id = ?")) {
                for (int i = 0; i < 3; i++) {
                    up.setString(1, "updated " + i);
                    up.setInt(2, 10);
                    check("UPDATE count, run " + (i + 1), up.executeUpdate(), 3);
                }
                try (PreparedStatement ins = conn.prepareStatement("INSERT INTO " + TABLE + " (id) VALUES (?)")) {
                    for (int id = 90; id < 93; id++) {
                        ins.setInt(1, id);
                        ins.executeUpdate();
                    }
                }
                for (int id = 90; id < 93; id++) {
                    del.setInt(1, id);
                    check("DELETE count of id " + id, del.executeUpdate(), 1);
                }
                del.setInt(1, 90);
                check("DELETE count of a missing id", del.executeUpdate(), 0);
            }
        });

        run("setFetchSize(2) in a transaction: row-limited portal fetched in chunks (PortalSuspended)",
                "SELECT id FROM " + TABLE + " ORDER BY id", () -> {
            conn.setAutoCommit(false);
            try (PreparedStatement ps = conn.prepareStatement("SELECT id FROM " + TABLE + " WHERE id > ? ORDER BY id")) {
                ps.setFetchSize(2);
                ps.setInt(1, 0);
                List<Integer> ids = new ArrayList<>();
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        ids.add(rs.getInt(1));
                    }
                }
                check("all rows, in order", ids.toString(), "[1, 2, 10, 11, 12]");
                conn.commit();
            } finally {
                conn.setAutoCommit(true);
            }
        });

        run("Connection.isValid (empty query)", null, () -> {
            check("isValid(5)", conn.isValid(5), true);
        });

        run("RETURN_GENERATED_KEYS (INSERT ... RETURNING *)", null, () -> {
            try (PreparedStatement ps = conn.prepareStatement(
                    "INSERT INTO " + TABLE + " (id, t) VALUES (?, ?)", Statement.RETURN_GENERATED_KEYS)) {
                ps.setInt(1, 30);
                ps.setString(2, "returning");
                ps.executeUpdate();
                try (ResultSet keys = ps.getGeneratedKeys()) {
                    check("a generated-keys row", keys.next(), true);
                    check("id", keys.getInt("id"), 30);
                }
            } catch (SQLException e) {
                if (String.valueOf(e.getMessage()).contains("returning clause not supported")
                        || String.valueOf(e.getMessage()).contains("Insert-returning")) {
                    gap("INSERT ... RETURNING", e.getMessage().split("\n")[0], "the inserted row");
                } else {
                    throw e;
                }
            }
            try (Statement st = conn.createStatement()) {
                st.executeUpdate("DELETE FROM " + TABLE + " WHERE id = 30");
            }
        });

        run("DatabaseMetaData.getTypeInfo", null, () -> {
            List<String> names = new ArrayList<>();
            try (ResultSet rs = conn.getMetaData().getTypeInfo()) {
                while (rs.next()) {
                    names.add(rs.getString("TYPE_NAME"));
                }
            }
            System.out.println("    " + names.size() + " types");
            for (String t : new String[] {"int4", "text", "uuid", "jsonb", "timestamptz"}) {
                check("getTypeInfo lists " + t, names.contains(t), true);
            }
        });

        run("setAutoCommit(false): BEGIN, SELECT, commit(); error => SQLSTATE 42P01, rollback()",
                "SELECT * FROM jdbc_no_such_table", () -> {
            conn.setAutoCommit(false);
            try {
                try (PreparedStatement ps = conn.prepareStatement("SELECT count(*) FROM " + TABLE)) {
                    try (ResultSet rs = ps.executeQuery()) {
                        rs.next();
                        check("count(*) in a transaction", rs.getLong(1), 5L);
                    }
                }
                conn.commit();
                try (Statement st = conn.createStatement()) {
                    st.executeQuery("SELECT * FROM jdbc_no_such_table");
                    mismatches.add("query on a missing table did not fail");
                } catch (SQLException e) {
                    check("SQLSTATE", e.getSQLState(), "42P01");
                }
                try (Statement st = conn.createStatement()) {
                    st.executeQuery("SELECT 1");
                    mismatches.add("statement in an aborted transaction did not fail");
                } catch (SQLException e) {
                    check("SQLSTATE in an aborted transaction", e.getSQLState(), "25P02");
                }
                conn.rollback();
                try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT 1")) {
                    check("usable after rollback()", rs.next(), true);
                }
                conn.commit();
            } finally {
                conn.setAutoCommit(true);
            }
        });

        run("DatabaseMetaData.getTables(null, \"public\", \"jdbc_types\", {TABLE})", null, () -> {
            DatabaseMetaData md = conn.getMetaData();
            try (ResultSet rs = md.getTables(null, "public", TABLE, new String[] {"TABLE"})) {
                check("a row", rs.next(), true);
                check("TABLE_SCHEM", rs.getString("TABLE_SCHEM"), "public");
                check("TABLE_NAME", rs.getString("TABLE_NAME"), TABLE);
                check("TABLE_TYPE", rs.getString("TABLE_TYPE"), "TABLE");
                check("one row only", rs.next(), false);
            }
            try (ResultSet rs = md.getTables(null, null, "%", null)) {
                boolean found = false;
                int n = 0;
                while (rs.next()) {
                    n++;
                    found |= TABLE.equals(rs.getString("TABLE_NAME"));
                }
                System.out.println("    getTables(null, null, %, null): " + n + " rows");
                check("getTables(null, null, %, null) lists " + TABLE, found, true);
            }
        });

        run("DatabaseMetaData.getColumns(null, \"public\", \"jdbc_types\", \"%\")", null, () -> {
            DatabaseMetaData md = conn.getMetaData();
            try (ResultSet rs = md.getColumns(null, "public", TABLE, "%")) {
                for (int i = 1; i <= COLUMNS.length; i++) {
                    if (!rs.next()) {
                        mismatches.add("only " + (i - 1) + " columns");
                        break;
                    }
                    String c = COLUMNS[i - 1];
                    check("COLUMN_NAME " + i, rs.getString("COLUMN_NAME"), c);
                    check("ORDINAL_POSITION of " + c, rs.getInt("ORDINAL_POSITION"), i);
                    check("TYPE_NAME of " + c, rs.getString("TYPE_NAME"), i == 1 ? "int4" : TYPE_NAMES[i - 1]);
                    check("DATA_TYPE of " + c, rs.getInt("DATA_TYPE"), JDBC_TYPES[i - 1]);
                    check("IS_NULLABLE of " + c, rs.getString("IS_NULLABLE"), "YES");
                    if (c.equals("n")) {
                        check("COLUMN_SIZE of numeric(12,3) (atttypmod)", rs.getInt("COLUMN_SIZE"), 12);
                        check("DECIMAL_DIGITS of numeric(12,3) (atttypmod)", rs.getInt("DECIMAL_DIGITS"), 3);
                    }
                    // varchar(n) keeps no length: its atttypmod is -1.
                    if (c.equals("v")) {
                        gap("COLUMN_SIZE of varchar(20) (atttypmod)", rs.getInt("COLUMN_SIZE"), 20);
                    }
                }
                check("no more columns", rs.next(), false);
            }
        });

        run("DatabaseMetaData.getSchemas / getTableTypes / getCatalogs", null, () -> {
            DatabaseMetaData md = conn.getMetaData();
            List<String> schemas = new ArrayList<>();
            try (ResultSet rs = md.getSchemas()) {
                while (rs.next()) {
                    schemas.add(rs.getString("TABLE_SCHEM"));
                }
            }
            System.out.println("    schemas: " + schemas);
            check("getSchemas lists public", schemas.contains("public"), true);
            check("getSchemas lists pg_catalog", schemas.contains("pg_catalog"), true);
            List<String> tableTypes = new ArrayList<>();
            try (ResultSet rs = md.getTableTypes()) {
                while (rs.next()) {
                    tableTypes.add(rs.getString(1));
                }
            }
            check("getTableTypes includes TABLE", tableTypes.contains("TABLE"), true);
            try (ResultSet rs = md.getCatalogs()) {
                check("getCatalogs: a row", rs.next(), true);
                check("getCatalogs: TABLE_CAT", rs.getString("TABLE_CAT"), "eddy");
            }
        });

        // pgjdbc's getPrimaryKeys and getIndexInfo call information_schema._pg_expandarray(),
        // a set-returning function of a composite type, in the select list.
        run("DatabaseMetaData.getPrimaryKeys / getIndexInfo", null, () -> {
            DatabaseMetaData md = conn.getMetaData();
            String[] names = {"getPrimaryKeys", "getIndexInfo"};
            for (String name : names) {
                try (ResultSet rs = name.equals("getPrimaryKeys")
                        ? md.getPrimaryKeys(null, "public", TABLE)
                        : md.getIndexInfo(null, "public", TABLE, false, true)) {
                    check(name + ": no rows (no keys or indexes)", rs.next(), false);
                } catch (SQLException e) {
                    if (String.valueOf(e.getMessage()).contains("_pg_expandarray")) {
                        gap(name, e.getSQLState() + " " + e.getMessage().split("\n")[0], "an empty result");
                    } else {
                        throw e;
                    }
                }
            }
        });

        run("connection still usable at the end", "SELECT 1", () -> {
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT 1")) {
                check("SELECT 1", rs.next() ? rs.getInt(1) : null, 1);
            }
        });
        conn.close();
        finish();
    }

    static void finish() {
        if (!GAPS.isEmpty()) {
            System.out.println("\n" + GAPS.size() + " known gap(s) (differences from PostgreSQL, not failures):");
            for (String g : GAPS) {
                System.out.println("- " + g);
            }
        }
        if (!FAILURES.isEmpty()) {
            System.err.println("\n" + FAILURES.size() + " FAILURE(S):");
            for (String f : FAILURES) {
                System.err.println(f);
            }
            System.exit(1);
        }
        System.out.println("\nall pgjdbc checks passed");
        System.exit(0);
    }
}
