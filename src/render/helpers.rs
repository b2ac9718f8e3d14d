//! The template helpers a Colombian clinic needs (`fecha`, `hora`, `pesos`, …): their
//! Handlebars glue and the plain functions behind them, in Spanish and in the rule's time zone.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Timelike};
use chrono_tz::Tz;
use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson,
};
use serde_json::Value as Json;

/// The zone helpers work in when the context has no `rule.timezone`.
pub const DEFAULT_TIMEZONE: Tz = chrono_tz::America::Bogota;

const DATE_EXAMPLE: &str = "expected RFC 3339 like 2026-11-26T15:30:00-05:00";

/// Our helpers; the order is the one shown to users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClinicHelper {
    Fecha,
    FechaCorta,
    Hora,
    PrimerNombre,
    Mayusculas,
    Minusculas,
    Capitalizar,
    Pesos,
    Default,
    Eq,
}

impl ClinicHelper {
    pub(crate) const ALL: [ClinicHelper; 10] = [
        ClinicHelper::Fecha,
        ClinicHelper::FechaCorta,
        ClinicHelper::Hora,
        ClinicHelper::PrimerNombre,
        ClinicHelper::Mayusculas,
        ClinicHelper::Minusculas,
        ClinicHelper::Capitalizar,
        ClinicHelper::Pesos,
        ClinicHelper::Default,
        ClinicHelper::Eq,
    ];

    pub(crate) const fn name(self) -> &'static str {
        match self {
            ClinicHelper::Fecha => "fecha",
            ClinicHelper::FechaCorta => "fecha_corta",
            ClinicHelper::Hora => "hora",
            ClinicHelper::PrimerNombre => "primer_nombre",
            ClinicHelper::Mayusculas => "mayusculas",
            ClinicHelper::Minusculas => "minusculas",
            ClinicHelper::Capitalizar => "capitalizar",
            ClinicHelper::Pesos => "pesos",
            ClinicHelper::Default => "default",
            ClinicHelper::Eq => "eq",
        }
    }

    /// How many positional values the helper takes.
    pub(crate) const fn arity(self) -> usize {
        match self {
            ClinicHelper::Default | ClinicHelper::Eq => 2,
            _ => 1,
        }
    }

    /// How a call looks, for error messages.
    pub(crate) const fn example(self) -> &'static str {
        match self {
            ClinicHelper::Fecha => "{{fecha appointment.start}}",
            ClinicHelper::FechaCorta => "{{fecha_corta appointment.start}}",
            ClinicHelper::Hora => "{{hora appointment.start}}",
            ClinicHelper::PrimerNombre => "{{primer_nombre appointment.paciente}}",
            ClinicHelper::Mayusculas => "{{mayusculas appointment.sede}}",
            ClinicHelper::Minusculas => "{{minusculas appointment.sede}}",
            ClinicHelper::Capitalizar => "{{capitalizar appointment.paciente}}",
            ClinicHelper::Pesos => "{{pesos appointment.valor}}",
            ClinicHelper::Default => "{{default appointment.sede \"principal\"}}",
            ClinicHelper::Eq => "{{#if (eq appointment.sede \"norte\")}}…{{/if}}",
        }
    }
}

fn helper_error(helper: ClinicHelper, message: impl std::fmt::Display) -> RenderError {
    RenderErrorReason::Other(format!("`{}`: {message}", helper.name())).into()
}

/// A value as the user wrote it: strings bare, anything else as JSON.
pub(crate) fn shown(value: &Json) -> String {
    match value {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl HelperDef for ClinicHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let helper = *self;
        // `register` refuses wrong arities; this guards templates compiled elsewhere.
        if h.params().len() != helper.arity() {
            return Err(helper_error(
                helper,
                format_args!(
                    "takes {} value(s), got {}: write {}",
                    helper.arity(),
                    h.params().len(),
                    helper.example()
                ),
            ));
        }
        let first = &h.params()[0];
        match helper {
            // A missing path is what `default` is for, and `eq` treats it like `#if` does
            // (as nothing); every other helper keeps strict mode's promise and names the path.
            ClinicHelper::Default => {
                let value = first.value();
                let absent = first.is_value_missing()
                    || match value {
                        Json::Null => true,
                        Json::String(s) => s.trim().is_empty(),
                        _ => false,
                    };
                let chosen = if absent { h.params()[1].value() } else { value };
                Ok(ScopedJson::Derived(chosen.clone()))
            }
            ClinicHelper::Eq => {
                let left = if first.is_value_missing() {
                    &Json::Null
                } else {
                    first.value()
                };
                let right_param = &h.params()[1];
                let right = if right_param.is_value_missing() {
                    &Json::Null
                } else {
                    right_param.value()
                };
                Ok(ScopedJson::Derived(Json::Bool(json_eq(left, right))))
            }
            _ => {
                if first.is_value_missing() {
                    return Err(RenderError::strict_error(first.relative_path()));
                }
                let value = first.value();
                let text = match helper {
                    ClinicHelper::Fecha | ClinicHelper::FechaCorta | ClinicHelper::Hora => {
                        let zone = context_zone(ctx)?;
                        let when = parse_when(value, zone)
                            .map_err(|problem| helper_error(helper, problem))?;
                        match helper {
                            ClinicHelper::Fecha => fecha(when.date),
                            ClinicHelper::FechaCorta => fecha_corta(when.date),
                            _ => {
                                let time = when.time.ok_or_else(|| {
                                    helper_error(
                                        helper,
                                        format_args!(
                                            "`{}` has no time of day: {DATE_EXAMPLE}",
                                            shown(value)
                                        ),
                                    )
                                })?;
                                hora(time.0, time.1)
                            }
                        }
                    }
                    ClinicHelper::Pesos => {
                        pesos(value).map_err(|problem| helper_error(helper, problem))?
                    }
                    _ => {
                        let text = text_of(value);
                        match helper {
                            ClinicHelper::PrimerNombre => primer_nombre(&text),
                            ClinicHelper::Mayusculas => text.to_uppercase(),
                            ClinicHelper::Minusculas => text.to_lowercase(),
                            _ => capitalizar(&text),
                        }
                    }
                };
                Ok(ScopedJson::Derived(Json::String(text)))
            }
        }
    }
}

/// Text helpers take strings; numbers and booleans as written; `null` as nothing (which
/// `check_variable` then refuses where it matters).
fn text_of(value: &Json) -> String {
    match value {
        Json::Null => String::new(),
        other => shown(other),
    }
}

/// Numbers compare by value (`1` equals `1.0`), everything else structurally.
fn json_eq(left: &Json, right: &Json) -> bool {
    match (left, right) {
        (Json::Number(a), Json::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) if a.is_f64() || b.is_f64() => x == y,
            _ => a == b,
        },
        _ => left == right,
    }
}

/// The zone named by the context's `rule.timezone`, else [`DEFAULT_TIMEZONE`].
fn context_zone(ctx: &Context) -> Result<Tz, RenderError> {
    match ctx.data().pointer("/rule/timezone") {
        None | Some(Json::Null) => Ok(DEFAULT_TIMEZONE),
        Some(Json::String(name)) => {
            parse_zone(name).map_err(|e| RenderErrorReason::Other(e).into())
        }
        Some(other) => Err(RenderErrorReason::Other(format!(
            "`rule.timezone`: `{other}` is not a time zone: use an IANA name like America/Bogota"
        ))
        .into()),
    }
}

pub(crate) fn parse_zone(name: &str) -> Result<Tz, String> {
    name.trim().parse::<Tz>().map_err(|_| {
        format!(
            "`rule.timezone`: `{name}` is not a time zone: use an IANA name like America/Bogota"
        )
    })
}

/// A moment as the patient should read it: a calendar date and, when given, a wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WallTime {
    pub date: NaiveDate,
    /// (hour 0–23, minute)
    pub time: Option<(u32, u32)>,
}

/// Reads a date the way appointments carry it. An instant with an offset (RFC 3339) is moved
/// into `zone`; a naive date-time is already wall time in `zone`, and is refused when that wall
/// time does not exist there (a DST gap); a bare `YYYY-MM-DD` is a date with no time.
pub(crate) fn parse_when(value: &Json, zone: Tz) -> Result<WallTime, String> {
    let not_a_date = || format!("`{}` is not a date: {DATE_EXAMPLE}", shown(value));
    let Json::String(raw) = value else {
        return Err(not_a_date());
    };
    let text = raw.trim();
    // `parse_from_rfc3339` wants the `T`; `FromStr` also takes a space or a lowercase `t`.
    let instant = DateTime::parse_from_rfc3339(text)
        .or_else(|_| text.parse::<DateTime<FixedOffset>>())
        .ok();
    if let Some(instant) = instant {
        let local = instant.with_timezone(&zone);
        return Ok(WallTime {
            date: local.date_naive(),
            time: Some((local.hour(), local.minute())),
        });
    }
    const NAIVE_FORMATS: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ];
    if let Some(naive) = NAIVE_FORMATS
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
    {
        // An ambiguous wall time (the repeated hour when clocks go back) reads the same
        // either way; only a wall time that never happens is refused.
        if zone.from_local_datetime(&naive).earliest().is_none() {
            return Err(format!(
                "`{raw}` does not exist in {zone} (the clocks skip it): give an offset, like 2026-11-26T15:30:00-05:00"
            ));
        }
        return Ok(WallTime {
            date: naive.date(),
            time: Some((naive.hour(), naive.minute())),
        });
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(WallTime { date, time: None });
    }
    Err(not_a_date())
}

const DIAS: [&str; 7] = [
    "lunes",
    "martes",
    "miércoles",
    "jueves",
    "viernes",
    "sábado",
    "domingo",
];

const MESES: [&str; 12] = [
    "enero",
    "febrero",
    "marzo",
    "abril",
    "mayo",
    "junio",
    "julio",
    "agosto",
    "septiembre",
    "octubre",
    "noviembre",
    "diciembre",
];

/// `jueves 26 de noviembre`.
///
/// Own tables rather than chrono's `es_CO` locale: the exact words patients read should not
/// change with a locale-data update.
pub(crate) fn fecha(date: NaiveDate) -> String {
    let dia = DIAS[date.weekday().num_days_from_monday() as usize];
    let mes = MESES[date.month0() as usize];
    format!("{dia} {} de {mes}", date.day())
}

/// `26/11/2026`.
pub(crate) fn fecha_corta(date: NaiveDate) -> String {
    format!("{:02}/{:02}/{}", date.day(), date.month(), date.year())
}

/// `3:30 p. m.`, `12:15 a. m.`: the 12-hour clock as written in Colombia.
pub(crate) fn hora(hour: u32, minute: u32) -> String {
    let suffix = if hour < 12 { "a. m." } else { "p. m." };
    let twelve = match hour % 12 {
        0 => 12,
        h => h,
    };
    format!("{twelve}:{minute:02} {suffix}")
}

/// Spanish particles that stay lowercase inside a name (`María de los Ángeles`).
const PARTICLES: [&str; 7] = ["de", "del", "la", "las", "los", "y", "e"];

/// Uppercases the first letter of each part of a word (`ana-maría` → `Ana-María`).
fn capitalize_word(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut at_start = true;
    for c in word.chars() {
        if at_start {
            out.extend(c.to_uppercase());
        } else {
            out.extend(c.to_lowercase());
        }
        at_start = c == '-';
    }
    out
}

/// Each word capitalized, whitespace collapsed: `carlos  PÉREZ` → `Carlos Pérez`. Spanish
/// particles after the first word stay lowercase (`JUAN DE LA CRUZ` → `Juan de la Cruz`).
pub(crate) fn capitalizar(text: &str) -> String {
    text.split_whitespace()
        .enumerate()
        .map(|(i, word)| {
            let lower = word.to_lowercase();
            if i > 0 && PARTICLES.contains(&lower.as_str()) {
                lower
            } else {
                capitalize_word(word)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first word, capitalized: `  CARLOS andrés pérez` → `Carlos`. Empty when the name is.
pub(crate) fn primer_nombre(name: &str) -> String {
    name.split_whitespace()
        .next()
        .map(capitalize_word)
        .unwrap_or_default()
}

/// `$1.250.000`: whole pesos, dot-grouped, rounded half away from zero; `-$5.000`.
/// Takes JSON numbers and numeric strings (`"1250000"`, `"1250000.0"`, `" 1e6 "`).
pub(crate) fn pesos(value: &Json) -> Result<String, String> {
    let refuse = || {
        format!(
            "`{}` is not an amount: give a number like 1250000 or \"1250000.0\"",
            shown(value)
        )
    };
    let decimal = match value {
        // Display of an f64 never uses exponents, so this stays a plain decimal string.
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.is_finite() => f.to_string(),
            _ => return Err(refuse()),
        },
        Json::String(s) => {
            let s = s.trim();
            if is_plain_decimal(s) {
                s.to_owned()
            } else {
                match s.parse::<f64>() {
                    Ok(f) if f.is_finite() && s.chars().any(|c| c.is_ascii_digit()) => {
                        f.to_string()
                    }
                    _ => return Err(refuse()),
                }
            }
        }
        _ => return Err(refuse()),
    };
    Ok(format_decimal_pesos(&decimal))
}

/// `-?digits(.digits)?`: exact, no float on the way.
fn is_plain_decimal(s: &str) -> bool {
    let unsigned = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (unsigned, None),
    };
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && fraction.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

/// Formats a string that [`is_plain_decimal`] accepted.
fn format_decimal_pesos(decimal: &str) -> String {
    let negative = decimal.starts_with('-');
    let unsigned = decimal.trim_start_matches(['-', '+']);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let mut digits: Vec<u8> = whole.bytes().map(|b| b - b'0').collect();
    if fraction.as_bytes().first().is_some_and(|&b| b >= b'5') {
        // Round away from zero: carry through the nines.
        let mut i = digits.len();
        loop {
            if i == 0 {
                digits.insert(0, 1);
                break;
            }
            i -= 1;
            if digits[i] == 9 {
                digits[i] = 0;
            } else {
                digits[i] += 1;
                break;
            }
        }
    }
    let first_nonzero = digits.iter().position(|&d| d != 0);
    let digits = match first_nonzero {
        Some(start) => &digits[start..],
        None => &[0u8][..],
    };
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3 + 2);
    for (i, d) in digits.iter().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push('.');
        }
        grouped.push(char::from(b'0' + d));
    }
    // `-0.4` rounds to zero, which has no sign.
    if negative && first_nonzero.is_some() {
        format!("-${grouped}")
    } else {
        format!("${grouped}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bogota(s: &str) -> Result<WallTime, String> {
        parse_when(&json!(s), DEFAULT_TIMEZONE)
    }

    #[test]
    fn fecha_in_spanish() {
        let when = bogota("2026-11-26T15:30:00-05:00").unwrap();
        assert_eq!(fecha(when.date), "jueves 26 de noviembre");
        assert_eq!(fecha_corta(when.date), "26/11/2026");
        let d = NaiveDate::from_ymd_opt(2027, 1, 3).unwrap();
        assert_eq!(fecha(d), "domingo 3 de enero");
        assert_eq!(fecha_corta(d), "03/01/2027");
        let d = NaiveDate::from_ymd_opt(2026, 9, 16).unwrap();
        assert_eq!(fecha(d), "miércoles 16 de septiembre");
        let d = NaiveDate::from_ymd_opt(2026, 8, 1).unwrap();
        assert_eq!(fecha(d), "sábado 1 de agosto");
    }

    #[test]
    fn hora_twelve_hour_clock() {
        assert_eq!(hora(15, 30), "3:30 p. m.");
        assert_eq!(hora(9, 5), "9:05 a. m.");
        assert_eq!(hora(12, 0), "12:00 p. m.");
        assert_eq!(hora(0, 15), "12:15 a. m.");
        assert_eq!(hora(23, 59), "11:59 p. m.");
    }

    #[test]
    fn utc_instants_move_into_the_zone() {
        let when = bogota("2026-11-26T20:30:00Z").unwrap();
        assert_eq!(when.time, Some((15, 30)));
        let mexico = parse_when(
            &json!("2026-11-26T20:30:00Z"),
            chrono_tz::America::Mexico_City,
        );
        assert_eq!(mexico.unwrap().time, Some((14, 30)));
        // Late evening in Bogotá is already the next day in UTC.
        let when = bogota("2026-11-27T02:00:00Z").unwrap();
        assert_eq!(fecha(when.date), "jueves 26 de noviembre");
        assert_eq!(when.time, Some((21, 0)));
    }

    #[test]
    fn naive_inputs_are_wall_time() {
        for s in [
            "2026-11-26T15:30",
            "2026-11-26T15:30:00",
            "2026-11-26 15:30",
            "2026-11-26 15:30:59.5",
            "2026-11-26 15:30:00-05:00",
        ] {
            let when = bogota(s).unwrap();
            assert_eq!(when.time, Some((15, 30)), "{s}");
            assert_eq!(fecha_corta(when.date), "26/11/2026", "{s}");
        }
        assert_eq!(bogota("2026-11-26").unwrap().time, None);
    }

    #[test]
    fn dst_gap_is_refused() {
        let err = parse_when(&json!("2026-03-08T02:30"), chrono_tz::America::New_York).unwrap_err();
        assert!(err.contains("does not exist in America/New_York"), "{err}");
    }

    #[test]
    fn non_dates_are_refused() {
        for v in [
            json!("mañana"),
            json!(""),
            json!(5),
            json!(true),
            json!("26/11/2026"),
        ] {
            let err = parse_when(&v, DEFAULT_TIMEZONE).unwrap_err();
            assert!(err.contains("is not a date: expected RFC 3339"), "{err}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(primer_nombre("CARLOS andrés pérez"), "Carlos");
        assert_eq!(primer_nombre("  ñoño  "), "Ñoño");
        assert_eq!(primer_nombre("ÁLVARO"), "Álvaro");
        assert_eq!(primer_nombre("ana-maría ruiz"), "Ana-María");
        assert_eq!(primer_nombre("   "), "");
        assert_eq!(capitalizar("carlos PÉREZ"), "Carlos Pérez");
        assert_eq!(capitalizar("  íñigo   NÚÑEZ "), "Íñigo Núñez");
        assert_eq!(capitalizar("MARÍA DE LOS ÁNGELES"), "María de los Ángeles");
        assert_eq!(capitalizar("de la hoz"), "De la Hoz");
    }

    #[test]
    fn pesos_table() {
        let cases = [
            (json!(0), "$0"),
            (json!(999), "$999"),
            (json!(1000), "$1.000"),
            (json!(1250000), "$1.250.000"),
            (json!("100000"), "$100.000"),
            (json!(" 1250000.0 "), "$1.250.000"),
            (json!(-5000), "-$5.000"),
            (json!(1250000.4), "$1.250.000"),
            (json!(1250000.5), "$1.250.001"),
            (json!(999999.5), "$1.000.000"),
            (json!(-0.4), "$0"),
            (json!("-0.6"), "-$1"),
            (json!("1e6"), "$1.000.000"),
            (json!(u64::MAX), "$18.446.744.073.709.551.615"),
            (
                json!("123456789012345678901234567890"),
                "$123.456.789.012.345.678.901.234.567.890",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(pesos(&input).unwrap(), expected, "{input}");
        }
    }

    #[test]
    fn pesos_refuses_non_numbers() {
        for v in [
            json!("mil"),
            json!(""),
            json!("1.250.000"),
            json!("NaN"),
            json!("inf"),
            json!(null),
            json!([1]),
        ] {
            let err = pesos(&v).unwrap_err();
            assert!(err.contains("is not an amount"), "{v}: {err}");
        }
    }

    #[test]
    fn eq_compares_numbers_by_value() {
        assert!(json_eq(&json!(1), &json!(1.0)));
        assert!(json_eq(&json!("norte"), &json!("norte")));
        assert!(!json_eq(&json!("1"), &json!(1)));
        assert!(!json_eq(&Json::Null, &json!("norte")));
    }
}
