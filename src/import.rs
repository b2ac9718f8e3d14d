//! Reading a clinic's export (CSV with a header row, or a JSON array of objects) into
//! appointments as the API takes them: header mapping, local times in the clinic's zone,
//! Spanish status words, and every bad row reported with its line in the file.
//!
//! Validation is the API's own ([`Appointment::from_json`]); this module only translates a
//! clinic's names and formats into ours first.

use crate::appointment::{Appointment, FieldError};
use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

/// Column names (normalized: lower case, no accents, `_` for spaces) each field is found under
/// when `--map` does not say otherwise.
const DEFAULT_ALIASES: &[(&str, &[&str])] = &[
    (
        "id",
        &["id", "cita", "id_cita", "codigo_cita", "appointment_id"],
    ),
    (
        "mobile",
        &[
            "celular",
            "movil",
            "telefono",
            "telefono_celular",
            "whatsapp",
            "mobile",
            "phone",
        ],
    ),
    ("start", &["fecha_hora", "inicio", "start", "fecha_cita"]),
    ("status", &["estado", "status", "estado_cita"]),
    // Exports that split the start in two columns.
    ("date", &["fecha", "date", "dia", "fecha_de_la_cita"]),
    ("time", &["hora", "time", "hora_cita", "hora_de_la_cita"]),
];

/// Local-time formats clinics' exports use, read in the configured zone.
const LOCAL_FORMATS: &[&str] = &[
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%dT%H:%M:%S",
    "%d/%m/%Y %H:%M",
    "%d/%m/%Y %H:%M:%S",
    "%d-%m-%Y %H:%M",
    "%d-%m-%Y %H:%M:%S",
];

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("`{0}` is neither `.csv` nor `.json`: export the appointments as CSV (with a header row) or as a JSON array")]
    UnknownFormat(String),
    #[error("`{path}` is not valid CSV: {message}")]
    Csv { path: String, message: String },
    #[error("`{path}` is not valid JSON (line {line}, column {column}): {message}")]
    Json {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("`{0}` must hold a JSON array of appointments: `[{{\"id\": \"A1\", \"mobile\": …, \"start\": …}}, …]`")]
    NotAnArray(String),
    #[error("`{path}`: {message}")]
    Header { path: String, message: String },
    #[error("`--map {0}`: write it as `COLUMN=field`, e.g. `--map \"Nro Cita=id\"`")]
    BadMap(String),
}

/// Which field a column fills.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Id,
    Mobile,
    Start,
    Status,
    /// The start's date, in a column of its own (named here): with a [`Target::Time`]
    /// column, the start when no column gives it whole. Kept for templates too.
    Date(String),
    /// The start's time of day, in a column of its own (see [`Target::Date`]).
    Time(String),
    /// Kept for templates under this name.
    Keep(String),
}

impl Target {
    fn from_field(field: &str) -> Target {
        match field {
            "id" => Target::Id,
            "mobile" => Target::Mobile,
            "start" => Target::Start,
            "status" => Target::Status,
            "date" => Target::Date(String::new()),
            "time" => Target::Time(String::new()),
            other => Target::Keep(other.to_string()),
        }
    }

    /// A date or time column keeps its own name for templates.
    fn of_column(self, column: &str) -> Target {
        match self {
            Target::Date(_) => Target::Date(column.to_string()),
            Target::Time(_) => Target::Time(column.to_string()),
            other => other,
        }
    }

    fn name(&self) -> &str {
        match self {
            Target::Id => "id",
            Target::Mobile => "mobile",
            Target::Start => "start",
            Target::Status => "status",
            Target::Date(_) => "date",
            Target::Time(_) => "time",
            Target::Keep(name) => name,
        }
    }
}

/// How the file's column names become our fields: the defaults plus `--map COLUMN=field`.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    /// Normalized column name → field, as given with `--map`.
    explicit: BTreeMap<String, String>,
}

impl Mapping {
    /// Reads `--map` arguments (`COLUMN=field`, e.g. `Nro Cita=id` or `Nombre=paciente`).
    pub fn from_args(args: &[String]) -> Result<Mapping, ImportError> {
        let mut explicit = BTreeMap::new();
        for arg in args {
            let Some((column, field)) = arg.split_once('=') else {
                return Err(ImportError::BadMap(arg.clone()));
            };
            let (column, field) = (normalize(column), field.trim());
            if column.is_empty() || field.is_empty() {
                return Err(ImportError::BadMap(arg.clone()));
            }
            explicit.insert(column, field.to_string());
        }
        Ok(Mapping { explicit })
    }

    /// The field of each column, in order. Explicit maps win; a default alias applies only to
    /// a field no explicit map fills.
    fn resolve(&self, columns: &[String]) -> Result<Vec<Target>, String> {
        let normalized: Vec<String> = columns.iter().map(|c| normalize(c)).collect();
        for column in self.explicit.keys() {
            if !normalized.contains(column) {
                return Err(format!(
                    "`--map {column}=…` names no column of the file (its columns: {})",
                    columns.join(", ")
                ));
            }
        }
        let explicit_fields: Vec<Target> = self
            .explicit
            .values()
            .map(|f| Target::from_field(f))
            .collect();
        let mut targets = Vec::with_capacity(columns.len());
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, column) in normalized.iter().enumerate() {
            let target = match self.explicit.get(column) {
                Some(field) => Target::from_field(field).of_column(column),
                None => {
                    let alias = DEFAULT_ALIASES
                        .iter()
                        .find(|(_, names)| names.contains(&column.as_str()))
                        .map(|(field, _)| Target::from_field(field))
                        .filter(|t| !explicit_fields.contains(t))
                        .map(|t| t.of_column(column));
                    alias.unwrap_or_else(|| {
                        Target::Keep(if column.is_empty() {
                            format!("columna_{}", i + 1)
                        } else {
                            column.clone()
                        })
                    })
                }
            };
            if let Some(previous) = seen.insert(target.name().to_string(), i) {
                return Err(format!(
                    "columns `{}` and `{}` both give `{}`: say which one with `--map \"{}={}\"` (the other is then kept under its own name)",
                    columns[previous].trim(),
                    columns[i].trim(),
                    target.name(),
                    columns[previous].trim(),
                    target.name()
                ));
            }
            targets.push(target);
        }
        Ok(targets)
    }
}

/// A column name as compared: trimmed, lower case, accents folded, spaces and `-` as `_`.
fn normalize(name: &str) -> String {
    name.trim()
        .chars()
        .map(|c| match c {
            'á' | 'à' | 'Á' | 'À' => 'a',
            'é' | 'è' | 'É' | 'È' => 'e',
            'í' | 'ì' | 'Í' | 'Ì' => 'i',
            'ó' | 'ò' | 'Ó' | 'Ò' => 'o',
            'ú' | 'ù' | 'ü' | 'Ú' | 'Ù' | 'Ü' => 'u',
            'ñ' | 'Ñ' => 'n',
            ' ' | '-' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect::<String>()
        .to_lowercase()
}

/// A valid row, ready for `POST /api/v1/appointments/batch`.
#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based line of the file where the row starts.
    pub line: usize,
    /// The API's shape, `id` included.
    pub body: Value,
    pub appointment: Appointment,
}

/// A row that cannot be imported, and every reason why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRow {
    pub line: usize,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            if e.field.is_empty() {
                write!(f, "{}", e.error)?;
            } else {
                write!(f, "{}: {}", e.field, e.error)?;
            }
        }
        Ok(())
    }
}

/// What a file held: the valid rows and the bad ones, both in file order.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub rows: Vec<Row>,
    pub bad: Vec<BadRow>,
    /// Things worth saying that are not errors (e.g. the file was read as Latin-1).
    pub notes: Vec<String>,
}

impl Parsed {
    pub fn total(&self) -> usize {
        self.rows.len() + self.bad.len()
    }
}

/// Reads `path` (by extension: `.csv` or `.json`), taking local times in `tz`.
pub fn read_file(
    path: &Path,
    mapping: &Mapping,
    tz: Tz,
    now: DateTime<Utc>,
) -> Result<Parsed, ImportError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| ImportError::Read {
        path: shown.clone(),
        source,
    })?;
    let (text, latin1) = decode(&bytes);
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut parsed = match extension.as_str() {
        "csv" | "txt" => read_csv(&text, &shown, mapping, tz, now)?,
        "json" => read_json(&text, &shown, mapping, tz, now)?,
        _ => return Err(ImportError::UnknownFormat(shown)),
    };
    if latin1 {
        parsed.notes.insert(
            0,
            format!("`{shown}` is not UTF-8: read it as Latin-1 (Excel's usual export); check the accents below"),
        );
    }
    Ok(parsed)
}

/// UTF-8 (without a byte-order mark), or Latin-1 when the bytes are not UTF-8.
fn decode(bytes: &[u8]) -> (String, bool) {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (bytes.iter().map(|&b| b as char).collect(), true),
    }
}

/// Reads CSV text with a header row. The delimiter is `,`, or `;` / tab when the header
/// uses those (Excel in Spanish exports with `;`).
pub fn read_csv(
    text: &str,
    shown: &str,
    mapping: &Mapping,
    tz: Tz,
    now: DateTime<Utc>,
) -> Result<Parsed, ImportError> {
    let header_line = text.lines().next().unwrap_or_default();
    let delimiter = [b',', b';', b'\t']
        .into_iter()
        .max_by_key(|d| header_line.bytes().filter(|b| b == d).count())
        .unwrap_or(b',');
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(text.as_bytes());
    let csv_error = |e: csv::Error| ImportError::Csv {
        path: shown.to_string(),
        message: e.to_string(),
    };
    let columns: Vec<String> = reader
        .headers()
        .map_err(csv_error)?
        .iter()
        .map(str::to_string)
        .collect();
    let header_error = |message: String| ImportError::Header {
        path: shown.to_string(),
        message,
    };
    let targets = mapping.resolve(&columns).map_err(header_error)?;
    let split_start = targets.iter().any(|t| matches!(t, Target::Date(_)))
        && targets.iter().any(|t| matches!(t, Target::Time(_)));
    for required in [Target::Id, Target::Mobile, Target::Start] {
        if required == Target::Start && split_start {
            continue;
        }
        if !targets.contains(&required) {
            let or_split = if required == Target::Start {
                " (or, split in two, `--map FECHA=date --map HORA=time`)"
            } else {
                ""
            };
            return Err(header_error(format!(
                "no column gives `{}` (columns: {}): name it with `--map COLUMN={}`{or_split}",
                required.name(),
                columns.join(", "),
                required.name()
            )));
        }
    }
    let mut builder = Builder::new(tz, now);
    for record in reader.records() {
        let record = record.map_err(csv_error)?;
        let line = record.position().map(|p| p.line() as usize).unwrap_or(0);
        if record.iter().all(|cell| cell.trim().is_empty()) {
            continue;
        }
        if record.len() != columns.len() {
            builder.bad(
                line,
                vec![FieldError {
                    field: String::new(),
                    error: format!(
                        "has {} fields where the header has {}: check the quoting and the delimiter",
                        record.len(),
                        columns.len()
                    ),
                }],
            );
            continue;
        }
        let cells = targets
            .iter()
            .zip(record.iter())
            .map(|(t, cell)| (t.clone(), Value::String(cell.to_string())));
        builder.row(line, cells.collect());
    }
    Ok(builder.finish())
}

/// Reads a JSON array of objects; each object's keys go through the same mapping as CSV
/// columns.
pub fn read_json(
    text: &str,
    shown: &str,
    mapping: &Mapping,
    tz: Tz,
    now: DateTime<Utc>,
) -> Result<Parsed, ImportError> {
    let value: Value = serde_json::from_str(text).map_err(|e| ImportError::Json {
        path: shown.to_string(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })?;
    let Value::Array(items) = value else {
        return Err(ImportError::NotAnArray(shown.to_string()));
    };
    let lines = element_lines(text);
    let mut builder = Builder::new(tz, now);
    for (index, item) in items.into_iter().enumerate() {
        let line = lines.get(index).copied().unwrap_or(index + 1);
        let Value::Object(object) = item else {
            builder.bad(
                line,
                vec![FieldError {
                    field: String::new(),
                    error: "not a JSON object: each appointment is `{\"id\": …, \"mobile\": …, \"start\": …}`".into(),
                }],
            );
            continue;
        };
        let keys: Vec<String> = object.keys().cloned().collect();
        let targets = match mapping.resolve(&keys) {
            Ok(t) => t,
            Err(message) => {
                builder.bad(
                    line,
                    vec![FieldError {
                        field: String::new(),
                        error: message,
                    }],
                );
                continue;
            }
        };
        builder.row(
            line,
            targets.into_iter().zip(object.into_values()).collect(),
        );
    }
    Ok(builder.finish())
}

/// The line where each element of the top-level JSON array starts (the text already parsed).
fn element_lines(text: &str) -> Vec<usize> {
    let mut lines = Vec::new();
    let (mut line, mut depth) = (1usize, 0usize);
    let (mut in_string, mut escaped, mut expecting) = (false, false, false);
    let mut start_value = |line: usize, depth: usize, expecting: &mut bool| {
        if depth == 1 && *expecting {
            lines.push(line);
            *expecting = false;
        }
    };
    for c in text.chars() {
        if c == '\n' {
            line += 1;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                start_value(line, depth, &mut expecting);
                in_string = true;
            }
            '[' | '{' => {
                start_value(line, depth, &mut expecting);
                if depth == 0 {
                    expecting = true;
                }
                depth += 1;
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            ',' if depth == 1 => expecting = true,
            c if c.is_whitespace() || c == ',' => {}
            _ => start_value(line, depth, &mut expecting),
        }
    }
    lines
}

/// Turns mapped cells into API bodies, validates them and finds repeated ids.
struct Builder {
    tz: Tz,
    now: DateTime<Utc>,
    parsed: Parsed,
    first_line_of: HashMap<String, usize>,
}

impl Builder {
    fn new(tz: Tz, now: DateTime<Utc>) -> Builder {
        Builder {
            tz,
            now,
            parsed: Parsed::default(),
            first_line_of: HashMap::new(),
        }
    }

    fn bad(&mut self, line: usize, errors: Vec<FieldError>) {
        self.parsed.bad.push(BadRow { line, errors });
    }

    fn row(&mut self, line: usize, cells: Vec<(Target, Value)>) {
        let mut body = Map::new();
        let mut id = None;
        let (mut date, mut time) = (None, None);
        let mut problems: Vec<FieldError> = Vec::new();
        let problem = |field: &str, error: String| FieldError {
            field: field.into(),
            error,
        };
        for (target, value) in cells {
            match target {
                Target::Id => id = scalar_text(&value).filter(|t| !t.is_empty()),
                Target::Mobile => {
                    if let Some(text) = scalar_text(&value).filter(|t| !t.is_empty()) {
                        body.insert("mobile".into(), text.into());
                    }
                }
                Target::Start => match value {
                    Value::String(text) if text.trim().is_empty() => {}
                    Value::String(text) => match parse_time(&text, self.tz) {
                        Ok(t) => {
                            body.insert("start".into(), t.to_rfc3339().into());
                        }
                        Err(e) => problems.push(problem("start", e)),
                    },
                    Value::Null => {}
                    other => problems.push(problem(
                        "start",
                        format!("`{other}` is not a time: write `2026-11-26 15:30` or `2026-11-26T15:30:00-05:00`"),
                    )),
                },
                Target::Status => match value {
                    Value::String(text) if text.trim().is_empty() => {}
                    Value::String(text) => {
                        body.insert("status".into(), status_word(&text).into());
                    }
                    // Not text: the API's validation says what is wrong with it.
                    other => {
                        body.insert("status".into(), other);
                    }
                },
                Target::Date(column) => date = Some((column, value)),
                Target::Time(column) => time = Some((column, value)),
                Target::Keep(name) => {
                    body.insert(name, value);
                }
            }
        }
        let filled = |cell: &Option<(String, Value)>| {
            cell.as_ref()
                .and_then(|(_, v)| scalar_text(v))
                .filter(|t| !t.is_empty())
        };
        if !body.contains_key("start") {
            match (filled(&date), filled(&time)) {
                (Some(d), Some(t)) => match start_of(&d, &t, self.tz) {
                    Ok(start) => {
                        body.insert("start".into(), start.to_rfc3339().into());
                    }
                    Err(e) => problems.push(problem("start", e)),
                },
                (Some(d), None) => problems.push(problem(
                    "start",
                    format!("the date `{d}` has no time of day: name the time's column with `--map \"HORA=time\"`, or give the start whole (`2026-11-26 15:30`)"),
                )),
                (None, Some(t)) => problems.push(problem(
                    "start",
                    format!("the time `{t}` has no date: name the date's column with `--map \"FECHA=date\"`, or give the start whole (`2026-11-26 15:30`)"),
                )),
                (None, None) => {}
            }
        }
        // Kept for templates too, under their columns' names.
        for (column, value) in [date, time].into_iter().flatten() {
            body.insert(column, value);
        }
        let id_text = id.clone().unwrap_or_default();
        if id.is_none() {
            problems.push(problem(
                "id",
                "required: the appointment's id in the clinic's system (name its column with `--map COLUMN=id`)".into(),
            ));
        }
        let value = Value::Object(body.clone());
        let validated = Appointment::from_json(&id_text, &value, self.now, None);
        let appointment = match validated {
            Ok(a) => Some(a),
            Err(errors) => {
                // A field this module could not translate is reported once, in its words.
                for e in errors {
                    if !problems.iter().any(|p| p.field == e.field) {
                        problems.push(e);
                    }
                }
                None
            }
        };
        if let Some(id) = &id {
            match self.first_line_of.get(id) {
                Some(first) => problems.push(problem(
                    "id",
                    format!("`{id}` is also on line {first}: each appointment once per file"),
                )),
                None => {
                    self.first_line_of.insert(id.clone(), line);
                }
            }
        }
        match appointment {
            Some(appointment) if problems.is_empty() => {
                body.insert("id".into(), id_text.into());
                self.parsed.rows.push(Row {
                    line,
                    body: Value::Object(body),
                    appointment,
                });
            }
            _ => self.bad(line, problems),
        }
    }

    fn finish(self) -> Parsed {
        self.parsed
    }
}

/// A string or number cell as trimmed text (ids and mobiles come as numbers from some JSON).
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A status as ours: Spanish words translated, case and accents ignored; anything else is
/// passed on for the API's validation to name.
pub fn status_word(text: &str) -> String {
    let word = normalize(text);
    let ours = match word.as_str() {
        "programada" | "agendada" | "pendiente" | "scheduled" => "scheduled",
        "confirmada" | "confirmed" => "confirmed",
        "cancelada" | "anulada" | "cancelled" | "canceled" => "cancelled",
        "atendida" | "cumplida" | "attended" => "attended",
        "no_asistio" | "inasistencia" | "no_show" => "no_show",
        _ => return text.trim().to_string(),
    };
    ours.to_string()
}

/// A time as clinics write it: RFC 3339 with its offset, or a local time (`2026-11-26 15:30`,
/// `26/11/2026 15:30`, `2026-11-26T15:30`) in `tz`.
/// The start from a date and a time of day in columns of their own: `26/11/2026` or
/// `2026-11-26`, and `15:30`, `15:30:00` or `3:30 pm` / `3:30 p. m.`.
fn start_of(date: &str, time: &str, tz: Tz) -> Result<DateTime<FixedOffset>, String> {
    let clock = time_of_day(time).ok_or_else(|| {
        format!("`{time}` is not a time of day: write `15:30`, `15:30:00` or `3:30 pm`")
    })?;
    // A date that already holds a time (`26/11/2026 00:00:00`, as spreadsheets export it).
    let day = date.split_whitespace().next().unwrap_or(date);
    parse_time(&format!("{day} {clock}"), tz)
        .map_err(|_| format!("`{date}` is not a date: write `26/11/2026` or `2026-11-26`"))
}

/// `15:30`, `15:30:00`, `3:30 pm`, `3:30 p. m.` → `15:30:00`.
fn time_of_day(text: &str) -> Option<String> {
    let folded: String = text
        .to_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '.')
        .collect();
    let (clock, half) = match folded.strip_suffix("am") {
        Some(c) => (c, Some(false)),
        None => match folded.strip_suffix("pm") {
            Some(c) => (c, Some(true)),
            None => (folded.as_str(), None),
        },
    };
    let parsed = chrono::NaiveTime::parse_from_str(clock, "%H:%M:%S")
        .or_else(|_| chrono::NaiveTime::parse_from_str(clock, "%H:%M"))
        .ok()?;
    let parsed = match half {
        None => parsed,
        Some(pm) => {
            use chrono::Timelike;
            let hour12 = parsed.hour();
            if !(1..=12).contains(&hour12) {
                return None;
            }
            let hour = hour12 % 12 + if pm { 12 } else { 0 };
            parsed.with_hour(hour)?
        }
    };
    Some(parsed.format("%H:%M:%S").to_string())
}

pub fn parse_time(text: &str, tz: Tz) -> Result<DateTime<FixedOffset>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t);
    }
    for format in LOCAL_FORMATS {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return match tz.from_local_datetime(&naive).earliest() {
                Some(t) => Ok(t.fixed_offset()),
                None => Err(format!(
                    "`{text}` does not exist in {} (the clock skips it): use the hour after",
                    tz.name()
                )),
            };
        }
    }
    Err(format!(
        "`{text}` is not a time: write `2026-11-26 15:30` or `26/11/2026 15:30` (in {}), or `2026-11-26T15:30:00-05:00`",
        tz.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TZ: Tz = chrono_tz::America::Bogota;

    #[test]
    fn local_times_take_the_configured_zone() {
        for text in [
            "2026-11-26 15:30",
            "26/11/2026 15:30",
            "2026-11-26T15:30",
            "2026-11-26T15:30:00-05:00",
        ] {
            assert_eq!(
                parse_time(text, TZ).map(|t| t.to_rfc3339()),
                Ok("2026-11-26T15:30:00-05:00".to_string()),
                "{text}"
            );
        }
        assert!(parse_time("mañana", TZ)
            .unwrap_err()
            .contains("America/Bogota"));
    }

    /// An export that splits the start in a date column and a time column: combined in the
    /// configured zone, kept for templates under the columns' names, and a half said clearly.
    #[test]
    fn a_start_split_in_date_and_hour_columns_is_combined() {
        let now = DateTime::parse_from_rfc3339("2026-11-20T08:00:00-05:00")
            .unwrap()
            .with_timezone(&Utc);
        let csv = "Cita;Celular;Fecha;Hora;Paciente\n\
                   A1;3001112233;26/11/2026;15:30;Ana\n\
                   A2;3001112234;2026-11-26;3:30 p. m.;Luis\n\
                   A3;3001112235;26/11/2026 00:00:00;9:05 AM;Eva\n\
                   A4;3001112236;26/11/2026;;Sin hora\n\
                   A5;3001112237;26/11/2026;25:00;Mala\n";
        let parsed = read_csv(csv, "citas.csv", &Mapping::default(), TZ, now).unwrap();
        let starts: Vec<String> = parsed
            .rows
            .iter()
            .map(|r| r.body["start"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            starts,
            [
                "2026-11-26T15:30:00-05:00",
                "2026-11-26T15:30:00-05:00",
                "2026-11-26T09:05:00-05:00"
            ]
        );
        assert_eq!(parsed.rows[0].body["fecha"], "26/11/2026");
        assert_eq!(parsed.rows[0].body["hora"], "15:30");
        let bad: Vec<String> = parsed.bad.iter().map(|b| b.to_string()).collect();
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].starts_with("line 5: start: the date `26/11/2026` has no time of day"));
        assert!(bad[0].contains("--map \"HORA=time\""), "{}", bad[0]);
        assert!(
            bad[1].contains("`25:00` is not a time of day"),
            "{}",
            bad[1]
        );

        // A whole start wins; the date and time columns stay for templates.
        let csv =
            "Cita;Celular;Fecha Hora;Fecha;Hora\nA1;3001112233;2026-11-27 10:00;26/11/2026;15:30\n";
        let parsed = read_csv(csv, "citas.csv", &Mapping::default(), TZ, now).unwrap();
        assert_eq!(parsed.rows[0].body["start"], "2026-11-27T10:00:00-05:00");
        assert_eq!(parsed.rows[0].body["hora"], "15:30");
    }

    #[test]
    fn json_elements_know_their_lines() {
        let text = "[\n  {\"a\": \"}\\\"{\"},\n  {\"b\": [1, 2]}, 3,\n\n  \"x\"\n]";
        assert_eq!(element_lines(text), vec![2, 3, 3, 5]);
    }

    #[test]
    fn spanish_columns_and_explicit_maps() {
        let columns: Vec<String> = ["Cita", "Móvil", "Fecha Hora", "Estado", "Paciente"]
            .map(String::from)
            .to_vec();
        let targets = Mapping::default().resolve(&columns).unwrap();
        assert_eq!(
            targets,
            vec![
                Target::Id,
                Target::Mobile,
                Target::Start,
                Target::Status,
                Target::Keep("paciente".into())
            ]
        );
        let mapping = Mapping::from_args(&["paciente=nombre".into(), "Cita=sede".into()]).unwrap();
        let targets = mapping.resolve(&columns).unwrap();
        assert_eq!(targets[0], Target::Keep("sede".into()));
        assert_eq!(targets[4], Target::Keep("nombre".into()));
        let both: Vec<String> = ["celular", "telefono"].map(String::from).to_vec();
        assert!(Mapping::default()
            .resolve(&both)
            .unwrap_err()
            .contains("--map \"celular=mobile\""));
    }
}
