#!/usr/bin/env node
// Drive EddyDB with node-postgres (`pg`, installed in tests/clients/node_modules).
//
// Usage: node tests/clients/node_drivers.js HOST PORT   (run with TZ=UTC; see below)
//
// Connects as user `eddy` to database `eddy`, creates a table with a column of every supported
// type, inserts one row through parameters $1..$n and one row of NULL parameters, reads both back
// and asserts the values *and* their JavaScript types, reads int8[]/text[]/int4[] arrays, runs a
// parameterised `SELECT ... WHERE id = $1` and a named prepared query run twice.
//
// What node-postgres sends on the wire:
// * `client.query(text)` without values: the simple query protocol.
// * `client.query(text, values)`: the extended protocol with an unnamed statement: Parse (no
//   parameter types: the server infers them), Bind (every value as text except Buffers, which
//   go in binary), Describe portal, Execute, Sync. Results are requested in text format.
// * `client.query({name, text, values})`: Parse of the named statement only the first time,
//   then just Bind/Describe portal/Execute/Sync against the cached name.
// * node-postgres parses `date` and `timestamp` (without time zone) in the *local* time zone,
//   so the test harness runs it with TZ=UTC.
//
// Every step runs even if an earlier one failed (as far as they are independent); the script
// prints each check, then exits 1 listing every failure, or 0 when all passed.

'use strict'

const path = require('path')

if (process.argv.length !== 4) {
  console.error('usage: node node_drivers.js HOST PORT')
  process.exit(2)
}
const HOST = process.argv[2]
const PORT = Number(process.argv[3])

let pg
try {
  pg = require(path.join(__dirname, 'node_modules', 'pg'))
} catch (e) {
  console.error(`MISSING node module pg (run npm ci in tests/clients): ${e.message}`)
  process.exit(3)
}

const FAILURES = []
const GAPS = []
let current = null // { step, query, mismatches }

function step(name, query) {
  current = { step: name, query: query || null, mismatches: [] }
  console.log(`[node-postgres] ${name}${query ? ': ' + oneLine(query) : ''}`)
}

function oneLine(sql) {
  return String(sql).split(/\s+/).join(' ').trim()
}

function show(v) {
  if (Buffer.isBuffer(v)) return `Buffer<${v.toString('hex')}>`
  if (v instanceof Date) return `Date(${isNaN(v.getTime()) ? 'Invalid' : v.toISOString()})`
  if (typeof v === 'bigint') return `${v}n`
  try {
    return JSON.stringify(v)
  } catch (e) {
    return String(v)
  }
}

function same(got, want) {
  if (Buffer.isBuffer(want)) return Buffer.isBuffer(got) && got.equals(want)
  if (want instanceof Date) return got instanceof Date && got.getTime() === want.getTime()
  if (want !== null && typeof want === 'object') return JSON.stringify(got) === JSON.stringify(want)
  return Object.is(got, want)
}

function check(what, got, want) {
  if (!same(got, want)) current.mismatches.push(`${what}: expected ${show(want)}, got ${show(got)}`)
}

function typeName(v) {
  if (v === null) return 'null'
  if (Buffer.isBuffer(v)) return 'Buffer'
  if (v instanceof Date) return 'Date'
  if (Array.isArray(v)) return 'Array'
  return typeof v
}

function checkType(what, got, want) {
  const name = typeName(got)
  if (name !== want) current.mismatches.push(`${what}: expected JS type ${want}, got ${name} (${show(got)})`)
  return name === want
}

/**
 * A known difference from PostgreSQL that EddyDB does not close yet: printed and listed at the
 * end, not a failure. `pgWant` is what PostgreSQL gives.
 */
function gap(what, got, pgWant) {
  if (same(got, pgWant)) return
  const line = `${current.step}: ${what}: PostgreSQL gives ${show(pgWant)}, EddyDB ${show(got)}`
  console.log(`    KNOWN GAP ${line}`)
  GAPS.push(line)
}

/** End the current step: record and print its mismatches, or "ok". */
function done() {
  if (current.mismatches.length) {
    for (const m of current.mismatches) console.log(`    MISMATCH ${m}`)
    FAILURES.push({ step: current.step, query: current.query, detail: current.mismatches.join('\n') })
  } else {
    console.log('    ok')
  }
}

/** Run one step's body; an exception fails the step (with its SQLSTATE) but not the script. */
async function run(name, query, body) {
  step(name, query)
  try {
    await body()
  } catch (e) {
    const detail = `${e.constructor.name}: ${e.message}${e.code ? ` (SQLSTATE ${e.code})` : ''}`
    current.mismatches.push(`ERROR ${detail}`)
    if (e.stack) console.log(e.stack)
  }
  done()
  return current.mismatches.length === 0
}

const TABLE = 'node_pg_types'
const COLUMNS = ['id', 'b', 'i2', 'i4', 'i8', 'f4', 'f8', 'n', 't', 'v', 'bt', 'd', 'tm', 'ts', 'tz', 'j', 'jb', 'u']
const CREATE_COLUMNS =
  'id INT, b BOOLEAN, i2 SMALLINT, i4 INT, i8 BIGINT, f4 REAL, f8 DOUBLE PRECISION, ' +
  'n NUMERIC(12,3), t TEXT, v VARCHAR(20), bt BYTEA, d DATE, tm TIME, ts TIMESTAMP, ' +
  'tz TIMESTAMPTZ, j JSON, jb JSONB, u UUID'
// Type OIDs the RowDescription must carry (node-postgres picks its parsers by these).
const OIDS = {
  id: 23, b: 16, i2: 21, i4: 23, i8: 20, f4: 700, f8: 701, n: 1700, t: 25, v: 1043, bt: 17,
  d: 1082, tm: 1083, ts: 1114, tz: 1184, j: 114, jb: 3802, u: 2950,
}
const UUID = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'

// The values sent as parameters, in COLUMNS order.
const PARAMS = [
  1,
  true,
  32767,
  -2147483648,
  9223372036854775807n, // BigInt: sent as its decimal text
  1.5,
  -2.25,
  '123456789.125',
  "h\u00e9llo 'quoted' \\ back",
  'varchar',
  Buffer.from([0x00, 0x01, 0xfe, 0xff]), // sent in binary format
  '2024-02-29',
  '13:14:15.123456',
  '2024-02-29 13:14:15.123456',
  new Date(Date.UTC(2024, 1, 29, 13, 14, 15, 123)), // sent as '2024-02-29T13:14:15.123+00:00'
  { a: 1, b: [true, null] }, // objects are sent as JSON.stringify(value)
  { k: 'v', n: [1, 2] },
  UUID,
]

// What node-postgres' default (text) parsers return for each column, and the JS type.
const EXPECTED = {
  id: [1, 'number'],
  b: [true, 'boolean'],
  i2: [32767, 'number'],
  i4: [-2147483648, 'number'],
  i8: ['9223372036854775807', 'string'], // int8 is a string: it does not fit a double
  f4: [1.5, 'number'],
  f8: [-2.25, 'number'],
  n: ['123456789.125', 'string'], // numeric is a string
  t: ["h\u00e9llo 'quoted' \\ back", 'string'],
  v: ['varchar', 'string'],
  bt: [Buffer.from([0x00, 0x01, 0xfe, 0xff]), 'Buffer'],
  d: [new Date(Date.UTC(2024, 1, 29)), 'Date'], // local midnight; TZ=UTC
  tm: ['13:14:15.123456', 'string'], // time is a string
  ts: [new Date(Date.UTC(2024, 1, 29, 13, 14, 15, 123)), 'Date'], // local time; ms precision
  tz: [new Date(Date.UTC(2024, 1, 29, 13, 14, 15, 123)), 'Date'],
  j: [{ a: 1, b: [true, null] }, 'object'],
  jb: [{ k: 'v', n: [1, 2] }, 'object'],
  u: [UUID, 'string'],
}

function checkRow(label, row, expected) {
  check(`${label}: column names`, Object.keys(row), COLUMNS)
  for (const col of COLUMNS) {
    const got = row[col]
    if (expected === null && col !== 'id') {
      check(`${label}.${col} (NULL)`, got, null)
      continue
    }
    const [want, type] = expected === null ? [2, 'number'] : expected[col]
    if (checkType(`${label}.${col}`, got, type)) check(`${label}.${col}`, got, want)
  }
}

function checkFieldOids(fields) {
  check('result column names', fields.map((f) => f.name), COLUMNS)
  for (const f of fields) check(`type OID of column ${f.name}`, f.dataTypeID, OIDS[f.name])
  // Text results: node-postgres never asks for binary unless told to.
  check('result formats', fields.map((f) => f.format), COLUMNS.map(() => 'text'))
}

async function main() {
  console.log(`node-postgres ${require(path.join(__dirname, 'node_modules', 'pg', 'package.json')).version} ` +
    `(node ${process.version}, TZ=${process.env.TZ || ''}) against ${HOST}:${PORT}`)
  if (new Date(2024, 0, 1).getTimezoneOffset() !== 0) {
    console.log('WARNING: the local time zone is not UTC; date/timestamp checks assume TZ=UTC')
  }

  const client = new pg.Client({ host: HOST, port: PORT, user: 'eddy', database: 'eddy', connectionTimeoutMillis: 10000 })
  client.on('error', (e) => console.log(`client error event: ${e.message}`))
  client.on('notice', (n) => console.log(`    NOTICE ${n.message}`))

  const connected = await run('connect (startup, parameter status) + SELECT 1 (simple protocol)', 'SELECT 1 AS one', async () => {
    await client.connect()
    const res = await client.query('SELECT 1 AS one')
    check('rows', res.rows.length, 1)
    // An integer literal is int4 in PostgreSQL (a number in JS); EddyDB types it int8 (a string).
    check('value of SELECT 1', Number(res.rows[0].one), 1)
    check('type OID of SELECT 1', res.fields[0].dataTypeID, 23)
    const ver = await client.query('SHOW server_version')
    check('SHOW server_version: major >= 9', parseInt(ver.rows[0].server_version, 10) >= 9, true)
    const conforming = await client.query('SHOW standard_conforming_strings')
    check('standard_conforming_strings', conforming.rows[0].standard_conforming_strings, 'on')
  })
  if (!connected) return

  await run('DROP TABLE IF EXISTS + CREATE TABLE with every type', `CREATE TABLE ${TABLE} (${CREATE_COLUMNS})`, async () => {
    const drop = await client.query(`DROP TABLE IF EXISTS ${TABLE}`)
    check('DROP command tag', drop.command, 'DROP')
    const create = await client.query(`CREATE TABLE ${TABLE} (${CREATE_COLUMNS})`)
    check('CREATE command tag', create.command, 'CREATE')
  })

  const placeholders = COLUMNS.map((_, i) => `$${i + 1}`).join(', ')
  const insert = `INSERT INTO ${TABLE} (${COLUMNS.join(', ')}) VALUES (${placeholders})`
  await run('INSERT one row with parameters $1..$18 (unnamed extended-protocol statement)', insert, async () => {
    const res = await client.query(insert, PARAMS)
    check('command', res.command, 'INSERT')
    check('rowCount', res.rowCount, 1)
  })

  await run('INSERT a row of NULL parameters', insert, async () => {
    const res = await client.query(insert, COLUMNS.map((c) => (c === 'id' ? 2 : null)))
    check('rowCount', res.rowCount, 1)
  })

  const select = `SELECT ${COLUMNS.join(', ')} FROM ${TABLE} ORDER BY id`
  await run('read back both rows (simple protocol, text results)', select, async () => {
    const res = await client.query(select)
    checkFieldOids(res.fields)
    check('command', res.command, 'SELECT')
    check('row count', res.rows.length, 2)
    if (res.rows.length === 2) {
      checkRow('row 1', res.rows[0], EXPECTED)
      checkRow('row 2', res.rows[1], null)
    }
  })

  await run('read back both rows (extended protocol: a parameter forces Parse/Bind)', select.replace('ORDER BY', 'WHERE id >= $1 ORDER BY'), async () => {
    const res = await client.query(select.replace('ORDER BY', 'WHERE id >= $1 ORDER BY'), [0])
    checkFieldOids(res.fields)
    check('row count', res.rows.length, 2)
    if (res.rows.length === 2) {
      checkRow('row 1', res.rows[0], EXPECTED)
      checkRow('row 2', res.rows[1], null)
    }
  })

  await run('rowMode: array', select, async () => {
    const res = await client.query({ text: select, rowMode: 'array' })
    check('row 1 as an array: first three values', res.rows[0].slice(0, 3), [1, true, 32767])
    check('row 2 as an array: length', res.rows[1].length, COLUMNS.length)
  })

  const arrays = "SELECT ARRAY[1,2]::int8[] AS a8, ARRAY['a','b']::text[] AS at, ARRAY[1,2]::int4[] AS a4"
  await run('array results: int8[], text[], int4[]', arrays, async () => {
    for (const [label, values] of [['simple protocol', undefined], ['extended protocol', []]]) {
      const res = await client.query(arrays, values)
      check(`${label}: type OIDs (int8[] 1016, text[] 1009, int4[] 1007)`, res.fields.map((f) => f.dataTypeID), [1016, 1009, 1007])
      const row = res.rows[0]
      check(`${label}: int8[] (elements are strings)`, row.a8, ['1', '2'])
      check(`${label}: text[]`, row.at, ['a', 'b'])
      check(`${label}: int4[] (elements are numbers)`, row.a4, [1, 2])
      checkType(`${label}: int8[] JS type`, row.a8, 'Array')
    }
  })

  await run('literals without casts (typed by DataFusion)', "SELECT 1, ARRAY[1,2] AS a, 1.5 AS x, $1::jsonb AS j, $2::uuid AS u", async () => {
    const res = await client.query('SELECT 1, ARRAY[1,2] AS a, 1.5 AS x, $1::jsonb AS j, $2::uuid AS u', [{ k: 1 }, UUID])
    const row = res.rows[0]
    check('name of an unnamed column', res.fields[0].name, '?column?')
    check('ARRAY[1,2] type OID (int4[])', res.fields[1].dataTypeID, 1007)
    check('ARRAY[1,2] value', row.a, [1, 2])
    check('1.5 type OID (numeric)', res.fields[2].dataTypeID, 1700)
    check('1.5 value', Number(row.x), 1.5)
    check('$1::jsonb type OID', res.fields[3].dataTypeID, 3802)
    check('$1::jsonb value (parsed by node-postgres)', row.j, { k: 1 })
    check('$2::uuid type OID', res.fields[4].dataTypeID, 2950)
    check('$2::uuid value', row.u, UUID)
  })

  await run('array with a NULL element and an empty array', "SELECT ARRAY['x', NULL]::text[] AS a, CAST(ARRAY[] AS int8[]) AS e", async () => {
    const res = await client.query("SELECT ARRAY['x', NULL]::text[] AS a, CAST(ARRAY[] AS int8[]) AS e")
    check('text[] with NULL', res.rows[0].a, ['x', null])
    check('empty int8[]', res.rows[0].e, [])
  })

  const byId = `SELECT t, i8, n, bt, u FROM ${TABLE} WHERE id = $1`
  await run('parameterised SELECT ... WHERE id = $1', byId, async () => {
    let res = await client.query(byId, [1])
    check('rows for id 1', res.rows, [{ t: EXPECTED.t[0], i8: EXPECTED.i8[0], n: EXPECTED.n[0], bt: { type: 'Buffer', data: [0, 1, 254, 255] }, u: UUID }])
    res = await client.query(byId, [2])
    check('rows for id 2 (the NULL row)', res.rows, [{ t: null, i8: null, n: null, bt: null, u: null }])
    res = await client.query(byId, [3])
    check('rows for a missing id', res.rows, [])
    check('rowCount for a missing id', res.rowCount, 0)
    res = await client.query(byId, ['1'])
    check('a string parameter for an int column', res.rows.length, 1)
  })

  await run('parameters in WHERE of other types ($1 text, $2 bytea, $3 uuid, $4 timestamptz)',
    `SELECT id FROM ${TABLE} WHERE t = $1 AND bt = $2 AND u = $3 AND tz = $4`, async () => {
      const res = await client.query(`SELECT id FROM ${TABLE} WHERE t = $1 AND bt = $2 AND u = $3 AND tz = $4`,
        [PARAMS[8], PARAMS[10], UUID, PARAMS[14]])
      check('rows', res.rows, [{ id: 1 }])
    })

  const named = `SELECT id, i4, v FROM ${TABLE} WHERE id = $1`
  await run("named prepared query {name: 'q', text, values} run twice (Parse once, then Bind/Execute)", named, async () => {
    let res = await client.query({ name: 'q', text: named, values: [1] })
    check('first run', res.rows, [{ id: 1, i4: -2147483648, v: 'varchar' }])
    res = await client.query({ name: 'q', text: named, values: [2] })
    check('second run (another parameter)', res.rows, [{ id: 2, i4: null, v: null }])
    res = await client.query({ name: 'q', text: named, values: [1] })
    check('third run', res.rows, [{ id: 1, i4: -2147483648, v: 'varchar' }])
    check('type OIDs of the named statement', res.fields.map((f) => f.dataTypeID), [23, 23, 1043])
  })

  await run('named prepared INSERT run twice, then count', `INSERT INTO ${TABLE} (id, t) VALUES ($1, $2)`, async () => {
    for (const id of [10, 11]) {
      const res = await client.query({ name: 'ins', text: `INSERT INTO ${TABLE} (id, t) VALUES ($1, $2)`, values: [id, `row ${id}`] })
      check(`rowCount of insert ${id}`, res.rowCount, 1)
    }
    const res = await client.query(`SELECT count(*) AS c FROM ${TABLE}`)
    // count(*) is bigint: a string in node-postgres.
    check('count(*)', res.rows[0].c, '4')
    check('count(*) type OID', res.fields[0].dataTypeID, 20)
    const unnamed = await client.query(`SELECT count(*) FROM ${TABLE}`)
    check('column name of an unaliased count(*) (rows[0].count)', unnamed.fields[0].name, 'count')
  })

  await run('error: undefined table => SQLSTATE 42P01, connection still usable', 'SELECT * FROM node_no_such_table', async () => {
    try {
      await client.query('SELECT * FROM node_no_such_table')
      current.mismatches.push('query on a missing table did not fail')
    } catch (e) {
      check('SQLSTATE', e.code, '42P01')
    }
    try {
      await client.query('SELECT * FROM node_no_such_table WHERE x = $1', [1])
      current.mismatches.push('extended-protocol query on a missing table did not fail')
    } catch (e) {
      check('SQLSTATE (extended protocol)', e.code, '42P01')
    }
    const res = await client.query(byId, [1])
    check('query after the errors', res.rows.length, 1)
  })

  // EddyDB applies each statement atomically as it runs: ROLLBACK cannot undo an INSERT (it
  // says so in a NOTICE).
  await run('transaction: BEGIN, INSERT, ROLLBACK; BEGIN, INSERT, COMMIT', `INSERT INTO ${TABLE} (id) VALUES ($1)`, async () => {
    await client.query('BEGIN')
    await client.query(`INSERT INTO ${TABLE} (id) VALUES ($1)`, [20])
    const rollback = await client.query('ROLLBACK')
    check('ROLLBACK command tag', rollback.command, 'ROLLBACK')
    let res = await client.query(`SELECT count(*) AS c FROM ${TABLE} WHERE id = $1`, [20])
    gap('rows left by a rolled-back INSERT', res.rows[0].c, '0')
    await client.query(`DELETE FROM ${TABLE} WHERE id = $1`, [20])
    await client.query('BEGIN')
    await client.query(`INSERT INTO ${TABLE} (id) VALUES ($1)`, [21])
    const commit = await client.query('COMMIT')
    check('COMMIT command tag', commit.command, 'COMMIT')
    res = await client.query(`SELECT count(*) AS c FROM ${TABLE} WHERE id = $1`, [21])
    check('row count after COMMIT', res.rows[0].c, '1')
  })

  await run('pg.Pool: two concurrent clients', 'SELECT $1::int4 + 1 AS x', async () => {
    const pool = new pg.Pool({ host: HOST, port: PORT, user: 'eddy', database: 'eddy', max: 2 })
    try {
      const results = await Promise.all([1, 2, 3, 4].map((i) => pool.query('SELECT $1::int4 + 1 AS x', [i])))
      check('results', results.map((r) => Number(r.rows[0].x)), [2, 3, 4, 5])
    } finally {
      await pool.end()
    }
  })

  await client.end()
}

main()
  .catch((e) => {
    FAILURES.push({ step: current ? current.step : 'startup', query: null, detail: String(e && e.stack) })
  })
  .finally(() => {
    if (GAPS.length) {
      console.log(`\n${GAPS.length} known gap(s) (differences from PostgreSQL, not failures):`)
      for (const g of GAPS) console.log(`- ${g}`)
    }
    if (FAILURES.length) {
      console.error(`\n${FAILURES.length} FAILURE(S):`)
      for (const f of FAILURES) {
        console.error(`- node-postgres | step: ${f.step}`)
        if (f.query) console.error(`    query: ${oneLine(f.query)}`)
        for (const line of f.detail.split('\n')) console.error(`    ${line}`)
      }
      process.exit(1)
    }
    console.log('\nall node-postgres checks passed')
    process.exit(0)
  })
