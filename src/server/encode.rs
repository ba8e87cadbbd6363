//! Arrow values to PostgreSQL wire values and back: the one codec between DataFusion and pgwire.
//!
//! Why: query results live in Arrow record batches, but clients (psql, JDBC, libpq, Grafana,
//! tokio-postgres) expect the exact text and binary representations PostgreSQL itself produces.
//! A client that asked for binary `numeric` or `timestamptz` decodes raw bytes with no second
//! chance, and text output is compared by tests and shown to users, so both must match
//! PostgreSQL byte for byte. The PostgreSQL type of each column comes from
//! [`crate::catalog::pg_types`]; this module only turns values into bytes and bytes into values.
//!
//! How data flows:
//! - Describe/Execute: [`row_description`] turns the Arrow schema into `FieldInfo`s (type OID,
//!   `typlen`, `typmod`, text or binary per column, the session's format options).
//! - Execute: [`encode_stream`] maps each record batch through [`encode_batch`]. Per batch and
//!   column, the array is downcast once into a boxed per-column value writer (chosen by one
//!   dispatch on the Arrow type, parameterised by the PostgreSQL type and the format); then
//!   every row appends each column as `i32 length + bytes` (or `-1` for NULL) straight into one
//!   shared buffer, which is split off into a `DataRow` per row. No per-value allocation on the
//!   common paths, no `ToSql` round trips.
//! - Bind: [`decode_parameters`] turns the portal's parameter bytes (text or binary, by the
//!   declared or inferred parameter type) into DataFusion `ScalarValue`s; malformed input is an
//!   [`Error::InvalidValue`], never a panic.

use std::fmt::{LowerExp, Write as _};
use std::str::FromStr;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike};

use datafusion::arrow::array::timezone::Tz;
use datafusion::arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, BinaryViewArray, FixedSizeBinaryArray,
    GenericBinaryArray, GenericListArray, GenericListViewArray, GenericStringArray,
    OffsetSizeTrait, StringViewArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::*;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::scalar::ScalarValue;
use futures::{Stream, StreamExt};
use pgwire::api::Type;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::results::{FieldFormat, FieldInfo};
use pgwire::error::PgWireResult;
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;

use crate::catalog::pg_types::{
    element_type_of, format_uuid, parse_bytea, parse_uuid, pg_type_of, pg_type_of_field,
    text_backed_input, type_len, type_modifier,
};
use crate::error::{Error, Result};

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_DAYS: i64 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS * MICROS_PER_DAY;
const MICROS_PER_SEC: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SEC;

// ---------------------------------------------------------------------------------------------
// Row descriptions and batches
// ---------------------------------------------------------------------------------------------

/// The RowDescription fields for a result schema, in the requested result formats.
pub fn row_description(
    schema: &Schema,
    format: Option<&Format>,
    options: &Arc<FormatOptions>,
) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let t = pg_type_of_field(field);
            let size = type_len(&t);
            let info = FieldInfo::new(field.name().clone(), None, None, t, format_at(format, i))
                .with_type_size(size)
                .with_format_options(Arc::clone(options));
            info.with_type_modifier(type_modifier(field.data_type()))
        })
        .collect()
}

/// The format of column or parameter `i`; unlike `Format::format_for`, a short list of codes
/// from the client cannot panic (missing codes mean text).
fn format_at(format: Option<&Format>, i: usize) -> FieldFormat {
    match format {
        None | Some(Format::UnifiedText) => FieldFormat::Text,
        Some(Format::UnifiedBinary) => FieldFormat::Binary,
        Some(Format::Individual(codes)) => codes
            .get(i)
            .map_or(FieldFormat::Text, |c| FieldFormat::from(*c)),
    }
}

/// Encode a stream of record batches into DataRows, batch by batch.
pub fn encode_stream(
    stream: SendableRecordBatchStream,
    fields: Arc<Vec<FieldInfo>>,
) -> impl Stream<Item = PgWireResult<DataRow>> + Send + 'static {
    stream.flat_map(move |batch| {
        let rows = batch
            .map_err(Error::from)
            .and_then(|batch| encode_batch(&batch, &fields));
        let items: Vec<PgWireResult<DataRow>> = match rows {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(super::handler::user_error(&e))],
        };
        futures::stream::iter(items)
    })
}

/// Encode one record batch into DataRows using the types and formats of `fields`.
pub fn encode_batch(batch: &RecordBatch, fields: &Arc<Vec<FieldInfo>>) -> Result<Vec<DataRow>> {
    if batch.num_columns() != fields.len() {
        return Err(Error::Internal(format!(
            "batch has {} columns but the row description {}",
            batch.num_columns(),
            fields.len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(fields.iter())
        .map(|(array, field)| {
            let ctx = Ctx::new(field.format_options());
            let binary = field.format() == FieldFormat::Binary;
            Ok((
                array.logical_nulls(),
                encoder(array, field.datatype(), binary, ctx)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let field_count = i16::try_from(fields.len())
        .map_err(|_| Error::Unsupported("more than 32767 result columns".into()))?;
    let rows = batch.num_rows();
    let mut buf = BytesMut::with_capacity((rows * (fields.len() * 12 + 8)).clamp(256, 1 << 20));
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        for (nulls, enc) in &columns {
            if is_null(nulls, row) {
                buf.put_i32(-1);
            } else {
                with_len(&mut buf, |buf| enc(row, buf))?;
            }
        }
        out.push(DataRow::new(buf.split(), field_count));
    }
    Ok(out)
}

/// Whether row `i` is NULL given the array's logical nulls.
fn is_null(nulls: &Option<NullBuffer>, i: usize) -> bool {
    nulls.as_ref().is_some_and(|n| n.is_null(i))
}

/// Write an `i32` length prefix followed by what `f` writes.
fn with_len(out: &mut BytesMut, f: impl FnOnce(&mut BytesMut) -> Result<()>) -> Result<()> {
    let start = out.len();
    out.put_i32(0);
    f(out)?;
    let len = i32::try_from(out.len() - start - 4)
        .map_err(|_| Error::InvalidValue("value too large for the wire protocol".into()))?;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Per-column encoders: one dispatch on the Arrow type per column and batch
// ---------------------------------------------------------------------------------------------

/// Writes the (non-NULL) value at a row, without length prefix.
type Enc = Box<dyn Fn(usize, &mut BytesMut) -> Result<()>>;

/// Session settings that change how values are rendered.
#[derive(Debug, Clone, Copy)]
struct Ctx {
    /// The session `TimeZone` (IANA name or fixed offset); `None` (unknown names too) is UTC.
    tz: Option<Tz>,
    extra_float_digits: i8,
}

impl Ctx {
    fn new(options: &FormatOptions) -> Self {
        Ctx {
            tz: Tz::from_str(options.time_zone.trim()).ok(),
            extra_float_digits: options.extra_float_digits,
        }
    }

    /// Seconds east of UTC in the session time zone at a UTC instant.
    fn offset_at(&self, utc: &NaiveDateTime) -> i32 {
        self.tz.map_or(0, |tz| {
            tz.offset_from_utc_datetime(utc).fix().local_minus_utc()
        })
    }
}

/// Wrap a typed array and a per-row writer into an [`Enc`].
fn enc<A: 'static>(a: A, f: impl Fn(&A, usize, &mut BytesMut) -> Result<()> + 'static) -> Enc {
    Box::new(move |i, out| f(&a, i, out))
}

/// An encoder over a primitive array: convert the native value, then write it.
fn prim<T: ArrowPrimitiveType, V>(
    array: &ArrayRef,
    conv: impl Fn(T::Native) -> V + 'static,
    write: impl Fn(V, &mut BytesMut) -> Result<()> + 'static,
) -> Enc {
    enc(array.as_primitive::<T>().clone(), move |a, i, out| {
        write(conv(a.value(i)), out)
    })
}

/// An encoder over a string or binary array, given its accessor.
fn bytes_of<A: 'static, B: AsRef<[u8]> + ?Sized + 'static>(
    a: A,
    get: fn(&A, usize) -> &B,
    write: impl Fn(&[u8], &mut BytesMut) -> Result<()> + 'static,
) -> Enc {
    enc(a, move |a, i, out| write(get(a, i).as_ref(), out))
}

/// Types whose binary representation is their text representation.
fn binary_is_text(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON | Type::UNKNOWN
    )
}

/// The value writer for one array, PostgreSQL type and format.
fn encoder(array: &ArrayRef, ty: &Type, binary: bool, ctx: Ctx) -> Result<Enc> {
    let dt = array.data_type();
    let is_string = matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    );
    if binary && binary_is_text(ty) && !is_string {
        return encoder(array, &pg_type_of(dt), false, ctx);
    }
    let tyc = ty.clone();
    let int = move |v: i128, out: &mut BytesMut| write_int(v, &tyc, binary, out);
    let date = move |days: i64, out: &mut BytesMut| write_date(days, binary, out);
    let time = move |us: i64, out: &mut BytesMut| write_time(us, binary, out);
    let interval = move |(m, d, us): (i32, i32, i64), out: &mut BytesMut| {
        write_interval(m, d, us, binary, out)
    };
    let tyc = ty.clone();
    let string = move |s: &[u8], out: &mut BytesMut| write_str(s, &tyc, binary, out);
    let bytea = move |b: &[u8], out: &mut BytesMut| write_bytea(b, binary, out);
    Ok(match dt {
        DataType::Null => Box::new(|_, _| Ok(())),
        DataType::Boolean => enc(array.as_boolean().clone(), move |a, i, out| {
            let v = a.value(i);
            out.put_u8(match (binary, v) {
                (true, v) => u8::from(v),
                (false, true) => b't',
                (false, false) => b'f',
            });
            Ok(())
        }),
        DataType::Int8 => prim::<Int8Type, _>(array, i128::from, int),
        DataType::Int16 => prim::<Int16Type, _>(array, i128::from, int),
        DataType::Int32 => prim::<Int32Type, _>(array, i128::from, int),
        DataType::Int64 => prim::<Int64Type, _>(array, i128::from, int),
        DataType::UInt8 => prim::<UInt8Type, _>(array, i128::from, int),
        DataType::UInt16 => prim::<UInt16Type, _>(array, i128::from, int),
        DataType::UInt32 => prim::<UInt32Type, _>(array, i128::from, int),
        DataType::UInt64 => prim::<UInt64Type, _>(array, i128::from, int),
        DataType::Float16 => {
            let (ty, d) = (ty.clone(), ctx.extra_float_digits);
            prim::<Float16Type, _>(array, f32::from, move |v, out| {
                write_float(v, &ty, binary, d, out)
            })
        }
        DataType::Float32 => {
            let (ty, d) = (ty.clone(), ctx.extra_float_digits);
            prim::<Float32Type, _>(
                array,
                |v| v,
                move |v, out| write_float(v, &ty, binary, d, out),
            )
        }
        DataType::Float64 => {
            let (ty, d) = (ty.clone(), ctx.extra_float_digits);
            prim::<Float64Type, _>(
                array,
                |v| v,
                move |v, out| write_float(v, &ty, binary, d, out),
            )
        }
        DataType::Decimal32(_, s) => decimal::<Decimal32Type>(array, *s, binary),
        DataType::Decimal64(_, s) => decimal::<Decimal64Type>(array, *s, binary),
        DataType::Decimal128(_, s) => decimal::<Decimal128Type>(array, *s, binary),
        DataType::Decimal256(_, s) => decimal::<Decimal256Type>(array, *s, binary),
        DataType::Utf8 => bytes_of(
            array.as_string::<i32>().clone(),
            GenericStringArray::<i32>::value,
            string,
        ),
        DataType::LargeUtf8 => bytes_of(
            array.as_string::<i64>().clone(),
            GenericStringArray::<i64>::value,
            string,
        ),
        DataType::Utf8View => bytes_of(
            array.as_string_view().clone(),
            StringViewArray::value,
            string,
        ),
        DataType::Binary => bytes_of(
            array.as_binary::<i32>().clone(),
            GenericBinaryArray::<i32>::value,
            bytea,
        ),
        DataType::LargeBinary => bytes_of(
            array.as_binary::<i64>().clone(),
            GenericBinaryArray::<i64>::value,
            bytea,
        ),
        DataType::BinaryView => bytes_of(
            array.as_binary_view().clone(),
            BinaryViewArray::value,
            bytea,
        ),
        DataType::FixedSizeBinary(_) => bytes_of(
            array.as_fixed_size_binary().clone(),
            FixedSizeBinaryArray::value,
            bytea,
        ),
        DataType::Date32 => prim::<Date32Type, _>(array, i64::from, date),
        DataType::Date64 => prim::<Date64Type, _>(array, |ms| ms.div_euclid(86_400_000), date),
        DataType::Time32(TimeUnit::Second) => {
            prim::<Time32SecondType, _>(array, |v| i64::from(v) * MICROS_PER_SEC, time)
        }
        DataType::Time32(_) => {
            prim::<Time32MillisecondType, _>(array, |v| i64::from(v) * 1000, time)
        }
        DataType::Time64(TimeUnit::Nanosecond) => {
            prim::<Time64NanosecondType, _>(array, |v| v.div_euclid(1000), time)
        }
        DataType::Time64(_) => prim::<Time64MicrosecondType, _>(array, |v| v, time),
        DataType::Timestamp(unit, tz) => {
            let unit = *unit;
            let zone = tz.as_ref().map(|_| ctx);
            let write = move |us: i64, out: &mut BytesMut| write_timestamp(us, zone, binary, out);
            let conv = move |v: i64| to_micros(v, unit, true);
            match unit {
                TimeUnit::Second => prim::<TimestampSecondType, _>(array, conv, write),
                TimeUnit::Millisecond => prim::<TimestampMillisecondType, _>(array, conv, write),
                TimeUnit::Microsecond => prim::<TimestampMicrosecondType, _>(array, conv, write),
                TimeUnit::Nanosecond => prim::<TimestampNanosecondType, _>(array, conv, write),
            }
        }
        DataType::Duration(unit) => {
            let unit = *unit;
            let conv = move |v: i64| (0, 0, to_micros(v, unit, false));
            match unit {
                TimeUnit::Second => prim::<DurationSecondType, _>(array, conv, interval),
                TimeUnit::Millisecond => prim::<DurationMillisecondType, _>(array, conv, interval),
                TimeUnit::Microsecond => prim::<DurationMicrosecondType, _>(array, conv, interval),
                TimeUnit::Nanosecond => prim::<DurationNanosecondType, _>(array, conv, interval),
            }
        }
        DataType::Interval(IntervalUnit::YearMonth) => {
            prim::<IntervalYearMonthType, _>(array, |m| (m, 0, 0), interval)
        }
        DataType::Interval(IntervalUnit::DayTime) => prim::<IntervalDayTimeType, _>(
            array,
            |v| (0, v.days, i64::from(v.milliseconds) * 1000),
            interval,
        ),
        DataType::Interval(IntervalUnit::MonthDayNano) => prim::<IntervalMonthDayNanoType, _>(
            array,
            |v| (v.months, v.days, v.nanoseconds / 1000),
            interval,
        ),
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(_, _)
        | DataType::ListView(_)
        | DataType::LargeListView(_) => list_encoder(array, ty, binary, ctx)?,
        DataType::Struct(_) | DataType::Map(_, _) => json_encoder(array, ty, ctx)?,
        DataType::Dictionary(_, value) => encoder(&cast(array, value)?, ty, binary, ctx)?,
        DataType::RunEndEncoded(_, value) => {
            encoder(&cast(array, value.data_type())?, ty, binary, ctx)?
        }
        other => {
            return Err(Error::Unsupported(format!(
                "returning values of type {other}"
            )));
        }
    })
}

/// Decode a dictionary or run-end encoded array into its plain values.
fn cast(array: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    datafusion::arrow::compute::cast(array, to)
        .map_err(|e| Error::from(datafusion::error::DataFusionError::from(e)))
}

/// A time value in `unit` as microseconds: floor for points in time, truncation for spans.
fn to_micros(v: i64, unit: TimeUnit, floor: bool) -> i64 {
    match unit {
        TimeUnit::Second => v.saturating_mul(MICROS_PER_SEC),
        TimeUnit::Millisecond => v.saturating_mul(1000),
        TimeUnit::Microsecond => v,
        TimeUnit::Nanosecond if floor => v.div_euclid(1000),
        TimeUnit::Nanosecond => v / 1000,
    }
}

// ---------------------------------------------------------------------------------------------
// Scalar values, text and binary
// ---------------------------------------------------------------------------------------------

fn write_int(v: i128, ty: &Type, binary: bool, out: &mut BytesMut) -> Result<()> {
    let range = || Error::InvalidValue(format!("{v} is out of range for type {}", ty.name()));
    if !binary {
        write!(out, "{v}").map_err(fmt_err)?;
        return Ok(());
    }
    match *ty {
        Type::INT2 => out.put_i16(i16::try_from(v).map_err(|_| range())?),
        Type::INT4 => out.put_i32(i32::try_from(v).map_err(|_| range())?),
        Type::OID => out.put_u32(u32::try_from(v).map_err(|_| range())?),
        Type::INT8 => out.put_i64(i64::try_from(v).map_err(|_| range())?),
        Type::FLOAT4 => out.put_f32(v as f32),
        Type::FLOAT8 => out.put_f64(v as f64),
        _ => write_numeric_binary(&Digits::of(v), 0, out),
    }
    Ok(())
}

fn fmt_err(_: std::fmt::Error) -> Error {
    Error::Internal("formatting a value failed".into())
}

/// `f32`/`f64`, for PostgreSQL's `float4out`/`float8out`.
trait PgFloat: Copy + LowerExp {
    /// `FLT_DIG` / `DBL_DIG`: where shortest output switches to exponent notation.
    const DIG: i32;
    fn to_f64(self) -> f64;
}

impl PgFloat for f32 {
    const DIG: i32 = 6;
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl PgFloat for f64 {
    const DIG: i32 = 15;
    fn to_f64(self) -> f64 {
        self
    }
}

fn write_float<F: PgFloat>(
    v: F,
    ty: &Type,
    binary: bool,
    extra_float_digits: i8,
    out: &mut BytesMut,
) -> Result<()> {
    let x = v.to_f64();
    if binary {
        match *ty {
            Type::FLOAT4 => out.put_f32(x as f32),
            _ => out.put_f64(x),
        }
        return Ok(());
    }
    if x.is_nan() {
        out.put_slice(b"NaN");
    } else if x.is_infinite() {
        out.put_slice(if x > 0.0 { b"Infinity" } else { b"-Infinity" });
    } else if extra_float_digits > 0 {
        // Shortest round-trip digits, as PostgreSQL 12+ (ryu) prints them.
        let mut s = Digits::new();
        write!(s, "{v:e}").map_err(fmt_err)?;
        float_layout(s.as_bytes(), F::DIG, out);
    } else {
        // `%.{DIG + extra_float_digits}g`, as with extra_float_digits <= 0.
        let precision = (F::DIG + i32::from(extra_float_digits)).max(1);
        let mut s = Digits::new();
        write!(s, "{v:.*e}", (precision - 1) as usize).map_err(fmt_err)?;
        float_layout(s.as_bytes(), precision, out);
    }
    Ok(())
}

/// Lay out Rust's `{:e}` output (`-1.2345e-7`) like C's `%g` with precision `p`: exponent
/// notation (`-1.2345e-07`) when the exponent is below -4 or at least `p`, else plain.
fn float_layout(sci: &[u8], p: i32, out: &mut BytesMut) {
    let (neg, sci) = match sci.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, sci),
    };
    let e_pos = sci.iter().position(|&b| b == b'e').unwrap_or(sci.len());
    let (mantissa, exp) = sci.split_at(e_pos);
    let exp: i32 = std::str::from_utf8(exp.get(1..).unwrap_or_default())
        .ok()
        .and_then(|e| e.parse().ok())
        .unwrap_or(0);
    let mut digits: Vec<u8> = mantissa
        .iter()
        .copied()
        .filter(u8::is_ascii_digit)
        .collect();
    while digits.len() > 1 && digits.last() == Some(&b'0') {
        digits.pop();
    }
    if neg {
        out.put_u8(b'-');
    }
    let (first, rest) = digits.split_first().unwrap_or((&b'0', &[]));
    if exp < -4 || exp >= p {
        out.put_u8(*first);
        if !rest.is_empty() {
            out.put_u8(b'.');
            out.put_slice(rest);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.unsigned_abs()
        );
    } else if exp < 0 {
        out.put_slice(b"0.");
        out.put_bytes(b'0', (-exp - 1) as usize);
        out.put_slice(&digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.put_slice(&digits);
            out.put_bytes(b'0', int_len - digits.len());
        } else {
            out.put_slice(&digits[..int_len]);
            out.put_u8(b'.');
            out.put_slice(&digits[int_len..]);
        }
    }
}

/// A small stack buffer for formatting numbers without allocating.
struct Digits {
    buf: [u8; 96],
    len: usize,
}

impl Digits {
    fn new() -> Self {
        Digits {
            buf: [0; 96],
            len: 0,
        }
    }

    /// The decimal digits of an integer (sign dropped; see [`Digits::negative`]).
    fn of(v: impl std::fmt::Display) -> Self {
        let mut d = Digits::new();
        let _ = write!(d, "{v}");
        d
    }

    fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    fn negative(&self) -> bool {
        self.as_bytes().first() == Some(&b'-')
    }

    /// The magnitude's digits, without a leading sign.
    fn magnitude(&self) -> &[u8] {
        let b = self.as_bytes();
        b.strip_prefix(b"-").unwrap_or(b)
    }
}

impl std::fmt::Write for Digits {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.buf
            .get_mut(self.len..end)
            .ok_or(std::fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A decimal column: the integer with a fixed scale, written as `numeric`.
fn decimal<T: DecimalType>(array: &ArrayRef, scale: i8, binary: bool) -> Enc
where
    T::Native: std::fmt::Display,
{
    prim::<T, _>(array, Digits::of, move |d, out| {
        if binary {
            write_numeric_binary(&d, i32::from(scale), out);
        } else {
            write_numeric_text(&d, i32::from(scale), out);
        }
        Ok(())
    })
}

/// `numeric` text: the digits with exactly `scale` fraction digits (`0.050`, `-12.5`).
fn write_numeric_text(d: &Digits, scale: i32, out: &mut BytesMut) {
    let mag = d.magnitude();
    if d.negative() {
        out.put_u8(b'-');
    }
    if scale <= 0 {
        out.put_slice(mag);
        if mag != b"0" {
            out.put_bytes(b'0', scale.unsigned_abs() as usize);
        }
        return;
    }
    let scale = scale as usize;
    if mag.len() > scale {
        let (int, frac) = mag.split_at(mag.len() - scale);
        out.put_slice(int);
        out.put_u8(b'.');
        out.put_slice(frac);
    } else {
        out.put_slice(b"0.");
        out.put_bytes(b'0', scale - mag.len());
        out.put_slice(mag);
    }
}

/// `numeric` binary (`numeric_send`): ndigits, weight, sign, dscale, then base-10000 digits,
/// computed exactly from the decimal digits of the unscaled integer and its scale.
fn write_numeric_binary(d: &Digits, scale: i32, out: &mut BytesMut) {
    let mag = d.magnitude();
    let mag = match mag.iter().position(|&b| b != b'0') {
        Some(first) => &mag[first..],
        None => &[][..],
    };
    // Decimal exponent of the most significant digit; each digit k sits at 10^(top - k).
    let top = mag.len() as i32 - 1 - scale;
    let mut groups: Vec<i16> = Vec::with_capacity(mag.len() / 4 + 2);
    let top_weight = top.div_euclid(4);
    for (k, &b) in mag.iter().enumerate() {
        let e = top - k as i32;
        let idx = (top_weight - e.div_euclid(4)) as usize;
        if groups.len() <= idx {
            groups.resize(idx + 1, 0);
        }
        groups[idx] += i16::from(b - b'0') * 10i16.pow(e.rem_euclid(4) as u32);
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let (weight, sign) = if groups.is_empty() {
        (0, 0x0000)
    } else if d.negative() {
        (top_weight, 0x4000)
    } else {
        (top_weight, 0x0000)
    };
    out.put_i16(groups.len() as i16);
    out.put_i16(weight as i16);
    out.put_u16(sign);
    out.put_i16(scale.max(0) as i16);
    for g in groups {
        out.put_i16(g);
    }
}

/// Text-typed values (text, varchar, json, jsonb, uuid). Arrow strings are valid UTF-8.
fn write_str(s: &[u8], ty: &Type, binary: bool, out: &mut BytesMut) -> Result<()> {
    match *ty {
        Type::JSONB if binary => {
            out.put_u8(1);
            out.put_slice(s);
        }
        Type::UUID if binary => {
            let text = String::from_utf8_lossy(s);
            let uuid = parse_uuid(&text).ok_or_else(|| invalid(ty, &text))?;
            out.put_slice(&uuid);
        }
        _ => out.put_slice(s),
    }
    Ok(())
}

/// `bytea`: text is `\x` and lowercase hex; binary is the raw bytes.
fn write_bytea(b: &[u8], binary: bool, out: &mut BytesMut) -> Result<()> {
    if binary {
        out.put_slice(b);
    } else {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.reserve(2 + 2 * b.len());
        out.put_slice(b"\\x");
        for &byte in b {
            out.put_u8(HEX[usize::from(byte >> 4)]);
            out.put_u8(HEX[usize::from(byte & 15)]);
        }
    }
    Ok(())
}

/// `date`: days since 1970-01-01 in, `2024-01-31` (or `0044-03-15 BC`) / i32 days since 2000.
fn write_date(days: i64, binary: bool, out: &mut BytesMut) -> Result<()> {
    let range = || Error::InvalidValue("date out of range".into());
    if binary {
        out.put_i32(i32::try_from(days - PG_EPOCH_DAYS).map_err(|_| range())?);
        return Ok(());
    }
    if days == i64::from(i32::MAX) || days == i64::from(i32::MIN) {
        out.put_slice(if days > 0 { b"infinity" } else { b"-infinity" });
        return Ok(());
    }
    let date = i32::try_from(days)
        .ok()
        .and_then(|d| NaiveDate::from_num_days_from_ce_opt(d.checked_add(719_163)?))
        .ok_or_else(range)?;
    let (year, bc) = pg_year(date.year());
    write!(out, "{year:04}-{:02}-{:02}{bc}", date.month(), date.day()).map_err(fmt_err)
}

/// PostgreSQL has no year 0: year 0 is 1 BC, -1 is 2 BC.
fn pg_year(year: i32) -> (i32, &'static str) {
    if year <= 0 {
        (1 - year, " BC")
    } else {
        (year, "")
    }
}

/// `.ffffff` with trailing zeros trimmed, nothing when zero.
fn write_fraction(micros: u64, out: &mut BytesMut) {
    if micros == 0 {
        return;
    }
    let mut digits = 6;
    let mut v = micros;
    while v.is_multiple_of(10) {
        v /= 10;
        digits -= 1;
    }
    let _ = write!(out, ".{v:0digits$}");
}

/// `HH:MM:SS[.ffffff]` from microseconds (hours may exceed 24, as in intervals).
fn write_hms(micros: u64, out: &mut BytesMut) {
    let secs = micros / MICROS_PER_SEC as u64;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    write_fraction(micros % MICROS_PER_SEC as u64, out);
}

/// `time`: microseconds since midnight.
fn write_time(micros: i64, binary: bool, out: &mut BytesMut) -> Result<()> {
    if binary {
        out.put_i64(micros);
    } else {
        write_hms(micros.rem_euclid(MICROS_PER_DAY) as u64, out);
    }
    Ok(())
}

/// `timestamp` (`zone` None) or `timestamptz` (rendered in the session time zone): Unix
/// microseconds in; `2024-01-31 12:34:56.5[+00]` or i64 microseconds since 2000 out.
fn write_timestamp(micros: i64, zone: Option<Ctx>, binary: bool, out: &mut BytesMut) -> Result<()> {
    if binary {
        out.put_i64(micros.saturating_sub(PG_EPOCH_MICROS));
        return Ok(());
    }
    if micros == i64::MAX || micros == i64::MIN {
        out.put_slice(if micros > 0 {
            b"infinity"
        } else {
            b"-infinity"
        });
        return Ok(());
    }
    let range = || Error::InvalidValue("timestamp out of range".into());
    let utc = DateTime::from_timestamp_micros(micros)
        .ok_or_else(range)?
        .naive_utc();
    let offset = zone.map(|ctx| ctx.offset_at(&utc));
    let local = match offset {
        Some(secs) => utc
            .checked_add_signed(chrono::TimeDelta::seconds(i64::from(secs)))
            .ok_or_else(range)?,
        None => utc,
    };
    let (year, bc) = pg_year(local.year());
    let _ = write!(
        out,
        "{year:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        local.month(),
        local.day(),
        local.hour(),
        local.minute(),
        local.second()
    );
    write_fraction(u64::from(local.nanosecond() / 1000), out);
    if let Some(secs) = offset {
        let a = secs.unsigned_abs();
        let _ = write!(out, "{}{:02}", if secs < 0 { '-' } else { '+' }, a / 3600);
        if a % 3600 != 0 {
            let _ = write!(out, ":{:02}", a / 60 % 60);
        }
        if a % 60 != 0 {
            let _ = write!(out, ":{:02}", a % 60);
        }
    }
    out.put_slice(bc.as_bytes());
    Ok(())
}

/// `interval`: binary is i64 microseconds, i32 days, i32 months; text is PostgreSQL's default
/// `postgres` IntervalStyle (`1 year 2 mons -3 days +04:05:06.5`).
fn write_interval(
    months: i32,
    days: i32,
    micros: i64,
    binary: bool,
    out: &mut BytesMut,
) -> Result<()> {
    if binary {
        out.put_i64(micros);
        out.put_i32(days);
        out.put_i32(months);
        return Ok(());
    }
    // PostgreSQL's EncodeInterval/AddPostgresIntPart, including its `+` after negatives.
    let (mut is_zero, mut is_before) = (true, false);
    for (v, unit) in [(months / 12, "year"), (months % 12, "mon"), (days, "day")] {
        if v == 0 {
            continue;
        }
        let sep = if is_zero { "" } else { " " };
        let plus = if is_before && v > 0 { "+" } else { "" };
        let s = if v != 1 { "s" } else { "" };
        let _ = write!(out, "{sep}{plus}{v} {unit}{s}");
        is_before = v < 0;
        is_zero = false;
    }
    if is_zero || micros != 0 {
        out.put_slice(if is_zero { b"" } else { b" " });
        if micros < 0 {
            out.put_u8(b'-');
        } else if is_before {
            out.put_u8(b'+');
        }
        write_hms(micros.unsigned_abs(), out);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Arrays (lists) and JSON (structs, maps)
// ---------------------------------------------------------------------------------------------

/// Row `i` of a list-like array as a range of its child values.
type Ranges = Box<dyn Fn(usize) -> (usize, usize)>;

/// The child values, child field and per-row ranges of any list-like array.
fn list_parts(array: &ArrayRef) -> Option<(ArrayRef, FieldRef, Ranges)> {
    fn list<O: OffsetSizeTrait>(
        a: &GenericListArray<O>,
        f: &FieldRef,
    ) -> (ArrayRef, FieldRef, Ranges) {
        let a = a.clone();
        let values = Arc::clone(a.values());
        let r = move |i: usize| {
            let o = a.value_offsets();
            (o[i].as_usize(), o[i + 1].as_usize())
        };
        (values, Arc::clone(f), Box::new(r))
    }
    fn view<O: OffsetSizeTrait>(
        a: &GenericListViewArray<O>,
        f: &FieldRef,
    ) -> (ArrayRef, FieldRef, Ranges) {
        let a = a.clone();
        let values = Arc::clone(a.values());
        let r = move |i: usize| {
            let start = a.value_offsets()[i].as_usize();
            (start, start + a.value_sizes()[i].as_usize())
        };
        (values, Arc::clone(f), Box::new(r))
    }
    Some(match array.data_type() {
        DataType::List(f) => list(array.as_list::<i32>(), f),
        DataType::LargeList(f) => list(array.as_list::<i64>(), f),
        DataType::ListView(f) => view(array.as_list_view::<i32>(), f),
        DataType::LargeListView(f) => view(array.as_list_view::<i64>(), f),
        DataType::FixedSizeList(f, _) => {
            let a = array.as_fixed_size_list().clone();
            let values = Arc::clone(a.values());
            let len = a.value_length().max(0) as usize;
            let r = move |i: usize| {
                let start = a.value_offset(i).max(0) as usize;
                (start, start + len)
            };
            (values, Arc::clone(f), Box::new(r))
        }
        DataType::Map(f, _) => {
            let a = array.as_map().clone();
            let values: ArrayRef = Arc::new(a.entries().clone());
            let r = move |i: usize| {
                let o = a.value_offsets();
                (o[i].as_usize(), o[i + 1].as_usize())
            };
            (values, Arc::clone(f), Box::new(r))
        }
        _ => return None,
    })
}

/// One-dimensional PostgreSQL arrays: text `{1,2,NULL}`; binary `array_send` layout.
fn list_encoder(array: &ArrayRef, ty: &Type, binary: bool, ctx: Ctx) -> Result<Enc> {
    let (values, field, ranges) =
        list_parts(array).ok_or_else(|| Error::Internal("not a list".into()))?;
    let elem_ty = element_type_of(ty).unwrap_or_else(|| pg_type_of_field(&field));
    let elem = encoder(&values, &elem_ty, binary, ctx)?;
    let nulls = values.logical_nulls();
    let oid = elem_ty.oid();
    Ok(Box::new(move |i, out| {
        let (start, end) = ranges(i);
        if binary {
            if start == end {
                out.put_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
                out.put_u32(oid);
                return Ok(());
            }
            let len = i32::try_from(end - start)
                .map_err(|_| Error::InvalidValue("array too large".into()))?;
            out.put_i32(1);
            out.put_i32(i32::from((start..end).any(|j| is_null(&nulls, j))));
            out.put_u32(oid);
            out.put_i32(len);
            out.put_i32(1);
            for j in start..end {
                if is_null(&nulls, j) {
                    out.put_i32(-1);
                } else {
                    with_len(out, |out| elem(j, out))?;
                }
            }
        } else {
            out.put_u8(b'{');
            for j in start..end {
                if j > start {
                    out.put_u8(b',');
                }
                if is_null(&nulls, j) {
                    out.put_slice(b"NULL");
                } else {
                    let p = out.len();
                    elem(j, out)?;
                    quote_array_element(out, p);
                }
            }
            out.put_u8(b'}');
        }
        Ok(())
    }))
}

/// Quote the array element written from `p` on if `array_out` would: empty, `NULL` in any
/// case, or containing `{},"\` or whitespace; `"` and `\` are then backslash-escaped.
fn quote_array_element(out: &mut BytesMut, p: usize) {
    let elem = &out[p..];
    let needs = elem.is_empty()
        || elem.eq_ignore_ascii_case(b"NULL")
        || elem.iter().any(|b| {
            matches!(
                b,
                b'{' | b'}' | b',' | b'"' | b'\\' | b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c
            )
        });
    if needs {
        let elem = elem.to_vec();
        out.truncate(p);
        out.put_u8(b'"');
        for b in elem {
            if b == b'"' || b == b'\\' {
                out.put_u8(b'\\');
            }
            out.put_u8(b);
        }
        out.put_u8(b'"');
    }
}

/// Turn the text written from `p` on into a JSON string literal.
fn json_quote(out: &mut BytesMut, p: usize) {
    let text = out[p..].to_vec();
    out.truncate(p);
    out.put_u8(b'"');
    for b in text {
        match b {
            b'"' => out.put_slice(b"\\\""),
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b'\t' => out.put_slice(b"\\t"),
            0x08 => out.put_slice(b"\\b"),
            0x0c => out.put_slice(b"\\f"),
            b if b < 0x20 => {
                let _ = write!(out, "\\u{b:04x}");
            }
            b => out.put_u8(b),
        }
    }
    out.put_u8(b'"');
}

/// JSON text for nested values (struct and map columns), as `row_to_json` would render them;
/// scalar leaves reuse the text encoders.
fn json_encoder(array: &ArrayRef, ty: &Type, ctx: Ctx) -> Result<Enc> {
    let nulls = array.logical_nulls();
    let dt = array.data_type();
    let inner: Enc = match dt {
        DataType::Struct(fields) => {
            let children = array
                .as_struct()
                .columns()
                .iter()
                .zip(fields.iter())
                .map(|(c, f)| {
                    Ok((
                        f.name().clone(),
                        json_encoder(c, &pg_type_of_field(f), ctx)?,
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            Box::new(move |i, out| {
                out.put_u8(b'{');
                for (k, (name, child)) in children.iter().enumerate() {
                    if k > 0 {
                        out.put_u8(b',');
                    }
                    let p = out.len();
                    out.put_slice(name.as_bytes());
                    json_quote(out, p);
                    out.put_u8(b':');
                    child(i, out)?;
                }
                out.put_u8(b'}');
                Ok(())
            })
        }
        DataType::Map(_, _) => {
            let (entries, _, ranges) =
                list_parts(array).ok_or_else(|| Error::Internal("not a map".into()))?;
            let entries = entries.as_struct();
            let (keys, vals) = (entries.column(0), entries.column(1));
            let key = encoder(keys, &pg_type_of(keys.data_type()), false, ctx)?;
            let val = json_encoder(vals, &pg_type_of(vals.data_type()), ctx)?;
            Box::new(move |i, out| {
                let (start, end) = ranges(i);
                out.put_u8(b'{');
                for j in start..end {
                    if j > start {
                        out.put_u8(b',');
                    }
                    let p = out.len();
                    key(j, out)?;
                    json_quote(out, p);
                    out.put_u8(b':');
                    val(j, out)?;
                }
                out.put_u8(b'}');
                Ok(())
            })
        }
        _ if list_parts(array).is_some() => {
            let (values, field, ranges) =
                list_parts(array).ok_or_else(|| Error::Internal("not a list".into()))?;
            let elem = json_encoder(&values, &pg_type_of_field(&field), ctx)?;
            Box::new(move |i, out| {
                let (start, end) = ranges(i);
                out.put_u8(b'[');
                for j in start..end {
                    if j > start {
                        out.put_u8(b',');
                    }
                    elem(j, out)?;
                }
                out.put_u8(b']');
                Ok(())
            })
        }
        DataType::Boolean => enc(array.as_boolean().clone(), |a, i, out| {
            out.put_slice(if a.value(i) { b"true" } else { b"false" });
            Ok(())
        }),
        DataType::Dictionary(_, value) => json_encoder(&cast(array, value)?, ty, ctx)?,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            if matches!(*ty, Type::JSON | Type::JSONB) =>
        {
            encoder(array, &Type::JSON, false, ctx)?
        }
        _ => {
            let numeric = dt.is_numeric();
            let text = encoder(array, &pg_type_of(dt), false, ctx)?;
            Box::new(move |i, out| {
                let p = out.len();
                text(i, out)?;
                // Numbers stay bare unless they are NaN or infinite.
                if !numeric || out[p..].iter().any(|b| matches!(b, b'N' | b'I')) {
                    json_quote(out, p);
                }
                Ok(())
            })
        }
    };
    Ok(Box::new(move |i, out| {
        if is_null(&nulls, i) {
            out.put_slice(b"null");
            Ok(())
        } else {
            inner(i, out)
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------

/// The error for input that is not a valid value of `ty`.
fn invalid(ty: &Type, text: &str) -> Error {
    Error::InvalidTextRepresentation(format!(
        "invalid input syntax for type {}: \"{}\"",
        crate::catalog::pg_types::format_type(ty),
        text
    ))
}

/// Decode the Bind parameters of a portal into scalars, by parameter type and format.
pub fn decode_parameters<S>(portal: &Portal<S>, types: &[Type]) -> Result<Vec<ScalarValue>> {
    portal
        .parameters
        .iter()
        .enumerate()
        .map(|(i, value)| {
            let ty = match types.get(i) {
                Some(t) if *t != Type::UNKNOWN => t,
                _ => &Type::TEXT,
            };
            let binary = format_at(Some(&portal.parameter_format), i) == FieldFormat::Binary;
            match value {
                None => null_of(ty),
                Some(bytes) => decode_value(ty, bytes, binary),
            }
        })
        .collect()
}

/// The Arrow type a parameter of PostgreSQL type `ty` decodes to.
fn arrow_type_of(ty: &Type) -> DataType {
    match *ty {
        Type::BOOL => DataType::Boolean,
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 | Type::OID => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::NUMERIC => DataType::Decimal128(38, 10),
        Type::BYTEA => DataType::Binary,
        Type::DATE => DataType::Date32,
        Type::TIME => DataType::Time64(TimeUnit::Microsecond),
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
        Type::INTERVAL => DataType::Interval(IntervalUnit::MonthDayNano),
        _ => match element_type_of(ty) {
            Some(elem) => {
                DataType::List(Arc::new(Field::new_list_field(arrow_type_of(&elem), true)))
            }
            None => DataType::Utf8,
        },
    }
}

/// The time zone of decoded `timestamptz` values.
const UTC: &str = "+00:00";

/// A typed NULL for a parameter of type `ty`.
fn null_of(ty: &Type) -> Result<ScalarValue> {
    Ok(ScalarValue::try_from(&arrow_type_of(ty))?)
}

/// One non-NULL parameter value.
fn decode_value(ty: &Type, bytes: &[u8], binary: bool) -> Result<ScalarValue> {
    match (element_type_of(ty), binary) {
        (Some(elem), true) => decode_array_binary(ty, &elem, bytes),
        (Some(elem), false) => {
            let text = std::str::from_utf8(bytes).map_err(|_| invalid_bytes(ty, bytes))?;
            let elems = parse_array_text(text).ok_or_else(|| invalid(ty, text))?;
            let values = elems
                .iter()
                .map(|e| e.as_deref().map(|e| decode_text(&elem, e)).transpose())
                .collect::<Result<Vec<_>>>()?;
            list_scalar(&elem, values)
        }
        (None, true) => decode_binary(ty, bytes),
        (None, false) => {
            let text = std::str::from_utf8(bytes).map_err(|_| invalid_bytes(ty, bytes))?;
            decode_text(ty, text)
        }
    }
}

/// The error for binary input that is not a valid value of `ty`, showing the bytes in hex.
fn invalid_bytes(ty: &Type, bytes: &[u8]) -> Error {
    let mut hex = BytesMut::new();
    let _ = write_bytea(bytes.get(..64).unwrap_or(bytes), false, &mut hex);
    invalid(ty, &String::from_utf8_lossy(&hex))
}

/// A one-dimensional array parameter from its decoded elements (`None` is NULL). Elements of
/// `numeric` arrays may differ in scale; they are brought to one type first.
fn list_scalar(elem: &Type, values: Vec<Option<ScalarValue>>) -> Result<ScalarValue> {
    let mut types = values.iter().flatten().map(ScalarValue::data_type);
    let first = types.next().unwrap_or_else(|| arrow_type_of(elem));
    let mut target = first.clone();
    for t in types {
        target = match (&target, &t) {
            (a, b) if a == b => target,
            (DataType::Decimal128(_, s1), DataType::Decimal128(_, s2)) => {
                DataType::Decimal128(38, (*s1).max(*s2))
            }
            _ => DataType::Float64,
        };
    }
    let cast_all = |target: &DataType| -> Result<Vec<ScalarValue>> {
        values
            .iter()
            .map(|v| match v {
                Some(v) if v.data_type() == *target => Ok(v.clone()),
                Some(v) => Ok(v.cast_to(target)?),
                None => Ok(ScalarValue::try_from(target)?),
            })
            .collect()
    };
    let (target, scalars) = match cast_all(&target) {
        Ok(s) => (target, s),
        Err(_) => (DataType::Float64, cast_all(&DataType::Float64)?),
    };
    let array = if scalars.is_empty() {
        datafusion::arrow::array::new_empty_array(&target)
    } else {
        ScalarValue::iter_to_array(scalars)?
    };
    Ok(datafusion::common::utils::SingleRowListArrayBuilder::new(array).build_list_scalar())
}

/// A value in PostgreSQL text input format (a text-format parameter, a COPY or JSON field).
pub fn decode_text(ty: &Type, s: &str) -> Result<ScalarValue> {
    let bad = || invalid(ty, s);
    let t = s.trim();
    Ok(match *ty {
        Type::BOOL => ScalarValue::Boolean(Some(parse_bool(t).ok_or_else(bad)?)),
        Type::INT2 => ScalarValue::Int16(Some(t.parse().map_err(|_| bad())?)),
        Type::INT4 => ScalarValue::Int32(Some(t.parse().map_err(|_| bad())?)),
        Type::INT8 => ScalarValue::Int64(Some(t.parse().map_err(|_| bad())?)),
        Type::OID => ScalarValue::Int64(Some(t.parse::<u32>().map_err(|_| bad())?.into())),
        Type::FLOAT4 => ScalarValue::Float32(Some(parse_float(t).ok_or_else(bad)?)),
        Type::FLOAT8 => ScalarValue::Float64(Some(parse_float(t).ok_or_else(bad)?)),
        Type::NUMERIC => parse_numeric(t).ok_or_else(bad)?,
        Type::BYTEA => ScalarValue::Binary(Some(parse_bytea(s).ok_or_else(bad)?)),
        Type::DATE => ScalarValue::Date32(Some(parse_date(t).ok_or_else(bad)?)),
        Type::TIME => ScalarValue::Time64Microsecond(Some(parse_time(t).ok_or_else(bad)?)),
        Type::TIMESTAMP => ScalarValue::TimestampMicrosecond(
            Some(parse_timestamp(t, false).ok_or_else(bad)?),
            None,
        ),
        Type::TIMESTAMPTZ => ScalarValue::TimestampMicrosecond(
            Some(parse_timestamp(t, true).ok_or_else(bad)?),
            Some(UTC.into()),
        ),
        Type::INTERVAL => {
            ScalarValue::IntervalMonthDayNano(Some(parse_interval(t).ok_or_else(bad)?))
        }
        Type::UUID | Type::JSON | Type::JSONB => {
            ScalarValue::Utf8(Some(text_backed_input(ty, s).ok_or_else(bad)?))
        }
        _ => ScalarValue::Utf8(Some(s.to_owned())),
    })
}

/// `boolin`: t/true/y/yes/on/1 and f/false/n/no/off/0, any case.
pub(crate) fn parse_bool(t: &str) -> Option<bool> {
    match t.to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Some(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// `float4in`/`float8in`: decimal or exponent notation, `NaN`, `Infinity`, `-Infinity`; a
/// finite literal that overflows is an error, as in PostgreSQL.
fn parse_float<F: FromStr + PgFloat>(t: &str) -> Option<F> {
    let v: F = t.parse().ok()?;
    let lower = t.to_ascii_lowercase();
    let finite_input = !lower.contains("inf") && !lower.contains("nan");
    (!finite_input || v.to_f64().is_finite()).then_some(v)
}

/// `numeric_in`: a decimal with the literal's scale (`1.50` has scale 2, `1e3` scale 0) as
/// `Decimal128(38, scale)`; beyond 38 digits, or NaN/Infinity, a `Float64`.
fn parse_numeric(t: &str) -> Option<ScalarValue> {
    let lower = t.to_ascii_lowercase();
    match lower.trim_start_matches('+') {
        "nan" => return Some(ScalarValue::Float64(Some(f64::NAN))),
        "infinity" | "inf" => return Some(ScalarValue::Float64(Some(f64::INFINITY))),
        "-infinity" | "-inf" => return Some(ScalarValue::Float64(Some(f64::NEG_INFINITY))),
        _ => {}
    }
    let (neg, body) = match t.as_bytes().first()? {
        b'-' => (true, t.get(1..)?),
        b'+' => (false, t.get(1..)?),
        _ => (false, t),
    };
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(p) => (body.get(..p)?, body.get(p + 1..)?.parse::<i32>().ok()?),
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let digits = int.bytes().chain(frac.bytes()).skip_while(|&b| b == b'0');
    let significant = digits.clone().count() as i64;
    let scale = frac.len() as i64 - i64::from(exp);
    let float = || t.parse::<f64>().ok().map(|v| ScalarValue::Float64(Some(v)));
    if significant + (-scale).max(0) > 38 || scale > 38 {
        return float();
    }
    let mut v: i128 = 0;
    for b in digits {
        v = v * 10 + i128::from(b - b'0');
    }
    for _ in 0..(-scale).max(0) {
        v *= 10;
    }
    let v = if neg { -v } else { v };
    Some(ScalarValue::Decimal128(Some(v), 38, scale.max(0) as i8))
}

/// An explicit time zone in date/time input.
enum Zone {
    /// Seconds east of UTC.
    Fixed(i32),
    Named(Tz),
}

/// `+02`, `-05:30`, `+0530`, `Z`, `UTC`, or an IANA name; `Ok(None)` when absent.
fn parse_zone(s: &str) -> Option<Option<Zone>> {
    let s = s.trim();
    if s.is_empty() {
        return Some(None);
    }
    if ["z", "utc", "gmt"]
        .iter()
        .any(|z| s.eq_ignore_ascii_case(z))
    {
        return Some(Some(Zone::Fixed(0)));
    }
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, s.get(1..)?),
        b'-' => (-1, s.get(1..)?),
        _ => return Tz::from_str(s).ok().map(|tz| Some(Zone::Named(tz))),
    };
    if !rest.is_ascii() {
        return None;
    }
    let parts: Vec<&str> = if rest.contains(':') {
        rest.split(':').collect()
    } else {
        let (h, m) = rest.split_at(rest.len().min(2));
        let (m, sec) = m.split_at(m.len().min(2));
        [h, m, sec].into_iter().filter(|p| !p.is_empty()).collect()
    };
    if parts.is_empty() || parts.len() > 3 || parts.iter().any(|p| p.is_empty() || p.len() > 2) {
        return None;
    }
    let mut secs = 0i32;
    for (k, part) in parts.iter().enumerate() {
        let v: i32 = part.parse().ok()?;
        if (k > 0 && v > 59) || v > 23 {
            return None;
        }
        secs += v * [3600, 60, 1][k];
    }
    Some(Some(Zone::Fixed(sign * secs)))
}

/// `HH:MM[:SS[.fffffffff]]` as microseconds (fractions rounded to microseconds).
fn parse_time_of_day(s: &str) -> Option<i64> {
    let mut parts = s.split(':');
    let (h, m, sec) = (parts.next()?, parts.next()?, parts.next().unwrap_or("0"));
    if parts.next().is_some() || h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let (sec, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits(h)
        || !digits(m)
        || !digits(sec)
        || sec.len() > 2
        || !(frac.is_empty() || digits(frac))
    {
        return None;
    }
    let (h, m, sec): (i64, i64, i64) = (h.parse().ok()?, m.parse().ok()?, sec.parse().ok()?);
    // Round to microseconds from at most 7 digits, as PostgreSQL rounds.
    let mut micros = 0i64;
    for k in 0..7 {
        let d = frac.as_bytes().get(k).map_or(0, |b| i64::from(b - b'0'));
        micros = micros * 10 + d;
    }
    let micros = (micros + 5) / 10;
    let total = ((h * 60 + m) * 60 + sec) * MICROS_PER_SEC + micros;
    (m < 60 && sec <= 60 && total <= MICROS_PER_DAY).then_some(total)
}

/// `YYYY-MM-DD[( |T)HH:MM[:SS[.f]]][zone][ BC]` as the local date-time and the zone, if any.
fn parse_datetime(t: &str) -> Option<(NaiveDateTime, Option<Zone>)> {
    let (t, bc) = match t.len().checked_sub(3).and_then(|p| t.get(p..)) {
        Some(suffix) if suffix.eq_ignore_ascii_case(" bc") => {
            (t.get(..t.len() - 3)?.trim_end(), true)
        }
        Some(suffix) if suffix.eq_ignore_ascii_case(" ad") => {
            (t.get(..t.len() - 3)?.trim_end(), false)
        }
        _ => (t, false),
    };
    let split = t.find([' ', 'T', 't']).unwrap_or(t.len());
    let (date, rest) = t.split_at(split);
    let mut ymd = date.split('-');
    let (y, m, d) = (ymd.next()?, ymd.next()?, ymd.next()?);
    let num_ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if ymd.next().is_some() || !num_ok(y) || !num_ok(m) || !num_ok(d) || m.len() > 2 || d.len() > 2
    {
        return None;
    }
    let year: i32 = y.parse().ok()?;
    let year = if bc { 1 - year } else { year };
    let date = NaiveDate::from_ymd_opt(year, m.parse().ok()?, d.parse().ok()?)?;
    let rest = rest.get(1..).unwrap_or("").trim_start();
    let time_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.'))
        .unwrap_or(rest.len());
    let (time, zone) = rest.split_at(time_end);
    let micros = if time.is_empty() {
        0
    } else {
        parse_time_of_day(time)?
    };
    let midnight = date.and_hms_opt(0, 0, 0)?;
    let local = midnight.checked_add_signed(chrono::TimeDelta::microseconds(micros))?;
    Some((local, parse_zone(zone)?))
}

fn parse_date(t: &str) -> Option<i32> {
    match t.to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => return Some(i32::MAX),
        "-infinity" => return Some(i32::MIN),
        "epoch" => return Some(0),
        _ => {}
    }
    let (dt, _) = parse_datetime(t)?;
    i32::try_from(dt.and_utc().timestamp().div_euclid(86_400)).ok()
}

/// `time`: a time of day; a trailing zone is accepted and ignored, as PostgreSQL does.
fn parse_time(t: &str) -> Option<i64> {
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.'))
        .unwrap_or(t.len());
    let (time, zone) = t.split_at(end);
    parse_zone(zone)?;
    parse_time_of_day(time)
}

/// `timestamp` / `timestamptz` as Unix microseconds. For `timestamptz` the value is converted
/// to UTC using its zone (UTC when it has none); `timestamp` ignores any zone.
fn parse_timestamp(t: &str, with_tz: bool) -> Option<i64> {
    match t.to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        "epoch" => return Some(0),
        _ => {}
    }
    let (local, zone) = parse_datetime(t)?;
    let offset = match zone {
        Some(_) if !with_tz => 0,
        None => 0,
        Some(Zone::Fixed(secs)) => secs,
        Some(Zone::Named(tz)) => tz
            .from_local_datetime(&local)
            .earliest()?
            .offset()
            .fix()
            .local_minus_utc(),
    };
    let utc = local.checked_sub_signed(chrono::TimeDelta::seconds(i64::from(offset)))?;
    Some(utc.and_utc().timestamp_micros())
}

/// `interval`: PostgreSQL's verbose syntax (`1 year 2 mons -3 days +04:05:06.5`, `@ 1 day ago`,
/// `1.5 hours`, a bare number of seconds) or ISO 8601 (`P1Y2M3DT4H5M6.5S`, `PT1H`).
fn parse_interval(t: &str) -> Option<IntervalMonthDayNano> {
    let mut acc = IntervalAcc::default();
    if let Some(iso) = t.strip_prefix(['P', 'p']) {
        let mut in_time = false;
        let mut rest = iso;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix(['T', 't']) {
                in_time = true;
                rest = r;
                continue;
            }
            let end = rest.find(|c: char| c.is_ascii_alphabetic())?;
            let (num, r) = rest.split_at(end);
            let unit = r.chars().next()?.to_ascii_uppercase();
            rest = r.get(1..)?;
            let unit = match (unit, in_time) {
                ('Y', false) => "year",
                ('M', false) => "month",
                ('W', false) => "week",
                ('D', false) => "day",
                ('H', true) => "hour",
                ('M', true) => "minute",
                ('S', true) => "second",
                _ => return None,
            };
            acc.add(num, unit)?;
        }
        return acc.finish(false);
    }
    let mut tokens = t.split_whitespace().peekable();
    let mut ago = false;
    while let Some(tok) = tokens.next() {
        if tok == "@" {
            continue;
        }
        if tok.eq_ignore_ascii_case("ago") {
            ago = true;
            continue;
        }
        if tok.contains(':') {
            let (neg, time) = match tok.as_bytes().first()? {
                b'-' => (true, tok.get(1..)?),
                b'+' => (false, tok.get(1..)?),
                _ => (false, tok),
            };
            let micros = parse_hms_span(time)?;
            acc.micros = acc.micros.checked_add(if neg { -micros } else { micros })?;
            continue;
        }
        let split = tok
            .find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(tok.len());
        let (num, mut unit) = tok.split_at(split);
        if unit.is_empty()
            && let Some(next) = tokens.next_if(|n| {
                n.bytes().all(|b| b.is_ascii_alphabetic()) && !n.eq_ignore_ascii_case("ago")
            })
        {
            unit = next;
        }
        acc.add(num, if unit.is_empty() { "second" } else { unit })?;
    }
    acc.finish(ago)
}

/// `[H]H:MM[:SS[.f]]` where hours may exceed 24, as microseconds.
fn parse_hms_span(s: &str) -> Option<i64> {
    let (h, rest) = s.split_once(':')?;
    if h.is_empty() || !h.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i64 = h.parse().ok()?;
    let rest = parse_time_of_day(&format!("0:{rest}"))?;
    hours.checked_mul(3600 * MICROS_PER_SEC)?.checked_add(rest)
}

/// Interval fields being accumulated, with PostgreSQL's spilling of fractional units.
#[derive(Default)]
struct IntervalAcc {
    months: i64,
    days: i64,
    micros: i64,
}

impl IntervalAcc {
    /// Add `num` (possibly signed and fractional) of `unit`.
    fn add(&mut self, num: &str, unit: &str) -> Option<()> {
        if num.is_empty() || num == "-" || num == "+" {
            return None;
        }
        let v: f64 = num.parse().ok()?;
        if !v.is_finite() || num.bytes().any(|b| b.is_ascii_alphabetic()) {
            return None;
        }
        let (int, frac) = (v.trunc(), v.fract());
        let int = int as i64;
        let unit = unit.to_ascii_lowercase();
        let micro_unit = match unit.as_str() {
            "microsecond" | "microseconds" | "us" | "usec" | "usecs" | "useconds" => Some(1),
            "millisecond" | "milliseconds" | "ms" | "msec" | "msecs" | "mseconds" => Some(1000),
            "second" | "seconds" | "s" | "sec" | "secs" => Some(MICROS_PER_SEC),
            "minute" | "minutes" | "m" | "min" | "mins" => Some(60 * MICROS_PER_SEC),
            "hour" | "hours" | "h" | "hr" | "hrs" => Some(3600 * MICROS_PER_SEC),
            _ => None,
        };
        if let Some(scale) = micro_unit {
            let add = int
                .checked_mul(scale)?
                .checked_add((frac * scale as f64).round() as i64)?;
            self.micros = self.micros.checked_add(add)?;
            return Some(());
        }
        let (day_scale, month_scale) = match unit.as_str() {
            "day" | "days" | "d" => (1, 0),
            "week" | "weeks" | "w" => (7, 0),
            "month" | "months" | "mon" | "mons" => (0, 1),
            "year" | "years" | "y" | "yr" | "yrs" => (0, 12),
            "decade" | "decades" => (0, 120),
            "century" | "centuries" => (0, 1200),
            "millennium" | "millennia" | "millenniums" => (0, 12000),
            _ => return None,
        };
        if month_scale > 0 {
            self.months = self.months.checked_add(int.checked_mul(month_scale)?)?;
            if month_scale == 1 {
                // Fractional months spill into 30-day days, then into time.
                let days = frac * 30.0;
                self.days = self.days.checked_add(days.trunc() as i64)?;
                self.micros = self
                    .micros
                    .checked_add((days.fract() * MICROS_PER_DAY as f64).round() as i64)?;
            } else {
                self.months = self
                    .months
                    .checked_add((frac * month_scale as f64).round() as i64)?;
            }
        } else {
            self.days = self.days.checked_add(int.checked_mul(day_scale)?)?;
            let days = frac * day_scale as f64;
            self.days = self.days.checked_add(days.trunc() as i64)?;
            self.micros = self
                .micros
                .checked_add((days.fract() * MICROS_PER_DAY as f64).round() as i64)?;
        }
        Some(())
    }

    fn finish(self, ago: bool) -> Option<IntervalMonthDayNano> {
        let sign = if ago { -1 } else { 1 };
        Some(IntervalMonthDayNano::new(
            i32::try_from(self.months.checked_mul(sign)?).ok()?,
            i32::try_from(self.days.checked_mul(sign)?).ok()?,
            self.micros.checked_mul(1000 * sign)?,
        ))
    }
}

/// `array_in` for one dimension: `{1,"a b",NULL}` (an optional `[1:3]=` prefix is skipped) into
/// elements, `None` for an unquoted `NULL`.
fn parse_array_text(s: &str) -> Option<Vec<Option<String>>> {
    let s = s.trim();
    let s = match s.strip_prefix('[') {
        Some(_) => s.split_once('=')?.1.trim_start(),
        None => s,
    };
    let inner = s.strip_prefix('{')?.strip_suffix('}')?;
    let mut elems = Vec::new();
    if inner.trim().is_empty() {
        return Some(elems);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut elem = String::new();
        let mut quoted = false;
        if chars.next_if_eq(&'"').is_some() {
            quoted = true;
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => elem.push(chars.next()?),
                    c => elem.push(c),
                }
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
        } else {
            while let Some(c) = chars.next_if(|&c| c != ',') {
                match c {
                    '{' | '}' | '"' => return None,
                    '\\' => elem.push(chars.next()?),
                    c => elem.push(c),
                }
            }
            elem.truncate(elem.trim_end().len());
            if elem.is_empty() {
                return None;
            }
        }
        let is_null = !quoted && elem.eq_ignore_ascii_case("NULL");
        elems.push((!is_null).then_some(elem));
        match chars.next() {
            None => return Some(elems),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// Exactly `N` bytes.
fn fixed<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
    b.try_into().ok()
}

/// A binary-format parameter (`*_recv`).
fn decode_binary(ty: &Type, b: &[u8]) -> Result<ScalarValue> {
    let bad = || invalid_bytes(ty, b);
    let text = || std::str::from_utf8(b).map(str::to_owned).map_err(|_| bad());
    Ok(match *ty {
        Type::BOOL => ScalarValue::Boolean(Some(fixed::<1>(b).ok_or_else(bad)?[0] != 0)),
        Type::INT2 => ScalarValue::Int16(Some(i16::from_be_bytes(fixed(b).ok_or_else(bad)?))),
        Type::INT4 => ScalarValue::Int32(Some(i32::from_be_bytes(fixed(b).ok_or_else(bad)?))),
        Type::INT8 => ScalarValue::Int64(Some(i64::from_be_bytes(fixed(b).ok_or_else(bad)?))),
        Type::OID => ScalarValue::Int64(Some(u32::from_be_bytes(fixed(b).ok_or_else(bad)?).into())),
        Type::FLOAT4 => ScalarValue::Float32(Some(f32::from_be_bytes(fixed(b).ok_or_else(bad)?))),
        Type::FLOAT8 => ScalarValue::Float64(Some(f64::from_be_bytes(fixed(b).ok_or_else(bad)?))),
        Type::NUMERIC => decode_numeric_binary(b).ok_or_else(bad)?,
        Type::BYTEA => ScalarValue::Binary(Some(b.to_vec())),
        Type::DATE => {
            let d = i32::from_be_bytes(fixed(b).ok_or_else(bad)?);
            let d = match d {
                i32::MAX | i32::MIN => d,
                d => d.checked_add(PG_EPOCH_DAYS as i32).ok_or_else(bad)?,
            };
            ScalarValue::Date32(Some(d))
        }
        Type::TIME => {
            ScalarValue::Time64Microsecond(Some(i64::from_be_bytes(fixed(b).ok_or_else(bad)?)))
        }
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let us = i64::from_be_bytes(fixed(b).ok_or_else(bad)?);
            let us = match us {
                i64::MAX | i64::MIN => us,
                us => us.checked_add(PG_EPOCH_MICROS).ok_or_else(bad)?,
            };
            let tz = (*ty == Type::TIMESTAMPTZ).then(|| UTC.into());
            ScalarValue::TimestampMicrosecond(Some(us), tz)
        }
        Type::INTERVAL => {
            let b16: [u8; 16] = fixed(b).ok_or_else(bad)?;
            let (us, rest) = b16.split_at(8);
            let (days, months) = rest.split_at(4);
            let us = i64::from_be_bytes(fixed(us).ok_or_else(bad)?);
            let days = i32::from_be_bytes(fixed(days).ok_or_else(bad)?);
            let months = i32::from_be_bytes(fixed(months).ok_or_else(bad)?);
            let nanos = us.checked_mul(1000).ok_or_else(bad)?;
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(months, days, nanos)))
        }
        Type::UUID => ScalarValue::Utf8(Some(format_uuid(&fixed(b).ok_or_else(bad)?))),
        Type::JSONB => match b.split_first() {
            Some((1, json)) => {
                let s = std::str::from_utf8(json).map_err(|_| bad())?;
                decode_text(ty, s)?
            }
            _ => return Err(bad()),
        },
        Type::JSON => decode_text(ty, &text()?)?,
        _ => ScalarValue::Utf8(Some(text()?)),
    })
}

/// `numeric_recv`: ndigits, weight, sign, dscale and base-10000 digits into
/// `Decimal128(38, dscale)`, or `Float64` for NaN, infinities and values beyond 38 digits.
fn decode_numeric_binary(b: &[u8]) -> Option<ScalarValue> {
    let word = |k: usize| {
        b.get(2 * k..2 * k + 2)
            .and_then(fixed::<2>)
            .map(i16::from_be_bytes)
    };
    let (ndigits, weight, sign, dscale) = (word(0)?, word(1)?, word(2)? as u16, word(3)?);
    if ndigits < 0 || dscale < 0 || b.len() != 8 + 2 * ndigits as usize {
        return None;
    }
    let special = match sign {
        0x0000 | 0x4000 => None,
        0xC000 => Some(f64::NAN),
        0xD000 => Some(f64::INFINITY),
        0xF000 => Some(f64::NEG_INFINITY),
        _ => return None,
    };
    if let Some(v) = special {
        return Some(ScalarValue::Float64(Some(v)));
    }
    let digits = (0..ndigits as usize)
        .map(|k| word(k + 4))
        .collect::<Option<Vec<i16>>>()?;
    if digits.iter().any(|d| !(0..10_000).contains(d)) {
        return None;
    }
    let neg = sign == 0x4000;
    // Exact: unscaled = sum of d_k * 10^(4 * (weight - k) + dscale).
    let exact = || -> Option<i128> {
        let mut v: i128 = 0;
        for (k, &d) in digits.iter().enumerate() {
            let e = 4 * (i32::from(weight) - k as i32) + i32::from(dscale);
            let term = if e >= 0 {
                i128::from(d).checked_mul(10i128.checked_pow(e as u32)?)?
            } else {
                i128::from(d) / 10i128.checked_pow(e.unsigned_abs())?
            };
            v = v.checked_add(term)?;
        }
        (v < 10i128.pow(38) && dscale <= 38).then_some(if neg { -v } else { v })
    };
    Some(match exact() {
        Some(v) => ScalarValue::Decimal128(Some(v), 38, dscale as i8),
        None => {
            let v: f64 = digits
                .iter()
                .enumerate()
                .map(|(k, &d)| f64::from(d) * 10f64.powi(4 * (i32::from(weight) - k as i32)))
                .sum();
            ScalarValue::Float64(Some(if neg { -v } else { v }))
        }
    })
}

/// `array_recv` for zero or one dimension.
fn decode_array_binary(ty: &Type, elem: &Type, b: &[u8]) -> Result<ScalarValue> {
    let bad = || invalid_bytes(ty, b);
    let mut rest = b;
    let mut take = |n: usize| -> Result<&[u8]> {
        let (head, tail) = rest.split_at_checked(n).ok_or_else(bad)?;
        rest = tail;
        Ok(head)
    };
    let mut int = || -> Result<i32> { Ok(i32::from_be_bytes(fixed(take(4)?).ok_or_else(bad)?)) };
    let (ndim, _flags, oid) = (int()?, int()?, int()? as u32);
    // Decode by the element type on the wire when it is a known scalar type; an array type
    // there would make arrays of arrays (and unbounded recursion), which a one-dimensional
    // array parameter cannot be.
    let elem = match Type::from_oid(oid) {
        Some(wire) if element_type_of(&wire).is_some() => return Err(bad()),
        Some(wire) => wire,
        None => elem.clone(),
    };
    let len = match ndim {
        0 => 0,
        1 => {
            let (len, _lower_bound) = (int()?, int()?);
            usize::try_from(len).map_err(|_| bad())?
        }
        _ => {
            return Err(Error::Unsupported(
                "multidimensional array parameters".into(),
            ));
        }
    };
    let mut values = Vec::with_capacity(len.min(b.len() / 4));
    for _ in 0..len {
        let n = i32::from_be_bytes(fixed(take(4)?).ok_or_else(bad)?);
        values.push(match usize::try_from(n) {
            Ok(n) => Some(decode_value(&elem, take(n)?, true)?),
            Err(_) => None,
        });
    }
    if !rest.is_empty() {
        return Err(bad());
    }
    list_scalar(&elem, values)
}
