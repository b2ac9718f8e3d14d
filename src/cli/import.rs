//! `recuerda import FILE.csv|FILE.json`: a clinic's export into the running engine, through
//! its API (`POST /api/v1/appointments/batch`), after every row was checked here first.

use crate::config::Config;
use crate::import::{read_file, Mapping, Parsed, Row};
use anyhow::{bail, Context as _};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Rows per request: the API validates and stores each batch as one.
const CHUNK_ROWS: usize = 1000;
/// Bytes per request, under the API's default 1 MiB body limit.
const CHUNK_BYTES: usize = 512 * 1024;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The clinic's export: `.csv` with a header row, or `.json` holding an array of objects.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Check every row and report; import nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Import the valid rows even when some are bad (they are still reported).
    #[arg(long)]
    pub skip_invalid: bool,
    /// A column's field, e.g. `--map "Nro Cita=id"`, `--map Nombre=paciente` (repeatable).
    /// Without it, common names are recognised: `id|cita|id_cita`,
    /// `celular|movil|telefono|mobile|phone`, `fecha_hora|inicio|start`, `estado|status`; other
    /// columns are kept for templates under their name (lower case, `_` for spaces, no accents).
    #[arg(long = "map", value_name = "COLUMN=FIELD")]
    pub map: Vec<String>,
    /// The running engine (default: `http://` + `listen` from the config).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// The API token (default: `api.token` from the config, or RECUERDA_API_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
}

pub async fn run(args: ImportArgs, config: Config) -> anyhow::Result<()> {
    let mapping = Mapping::from_args(&args.map)?;
    let parsed = read_file(&args.file, &mapping, config.timezone, chrono::Utc::now())?;
    for note in &parsed.notes {
        eprintln!("note: {note}");
    }
    for bad in &parsed.bad {
        eprintln!("{bad}");
    }
    let (valid, invalid) = (parsed.rows.len(), parsed.bad.len());
    if parsed.total() == 0 {
        bail!("`{}` holds no appointments", args.file.display());
    }
    if args.dry_run {
        println!(
            "dry run: {valid} valid rows, {invalid} invalid; nothing imported{}",
            if invalid > 0 && !args.skip_invalid {
                " (an import would refuse the file: fix the rows above or pass `--skip-invalid`)"
            } else {
                ""
            }
        );
        if invalid > 0 && !args.skip_invalid {
            bail!("{invalid} invalid rows");
        }
        return Ok(());
    }
    if invalid > 0 && !args.skip_invalid {
        bail!(
            "{invalid} of {} rows are invalid (listed above): nothing imported; fix them, or pass `--skip-invalid` to import the other {valid}",
            parsed.total()
        );
    }
    if valid == 0 {
        bail!("no valid rows to import");
    }
    let base = match &args.url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => default_url(&config),
    };
    let token = args
        .token
        .clone()
        .or_else(|| config.api.token.as_ref().map(|t| t.expose().to_string()))
        .context(
            "no API token: set `api.token` in the config, RECUERDA_API_TOKEN, or pass `--token`",
        )?;
    let outcome = post_rows(&base, &token, &parsed).await?;
    let skipped = if invalid > 0 {
        format!("; {invalid} invalid rows skipped")
    } else {
        String::new()
    };
    println!(
        "imported {} appointments ({} new, {} updated){skipped}",
        outcome.created + outcome.updated,
        outcome.created,
        outcome.updated
    );
    Ok(())
}

/// `http://` + the configured listen address, with a wildcard address read as loopback.
pub(crate) fn default_url(config: &Config) -> String {
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

#[derive(Debug, Default)]
struct Stored {
    created: u64,
    updated: u64,
}

/// Posts the valid rows in chunks. Each chunk is all-or-nothing on the engine's side; the
/// rows were validated here first, so a refusal means the engine disagrees (say, a newer
/// version), and the error says how far the import got.
async fn post_rows(base: &str, token: &str, parsed: &Parsed) -> anyhow::Result<Stored> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(300))
        .build()
        .context("cannot build the HTTP client")?;
    let endpoint = format!("{base}/api/v1/appointments/batch");
    let mut stored = Stored::default();
    for chunk in chunks(&parsed.rows) {
        let body = json!({"appointments": chunk.iter().map(|r| &r.body).collect::<Vec<_>>()});
        let response = http
            .post(&endpoint)
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                let done = progress(&stored);
                if e.is_connect() {
                    anyhow::anyhow!(
                        "cannot reach the engine at {base}: start `recuerda serve` first (or pass `--url`){done}"
                    )
                } else {
                    anyhow::anyhow!("the request to {base} failed: {}{done}", without_url(&e))
                }
            })?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        match status.as_u16() {
            200 => {
                stored.created += answer["created"].as_u64().unwrap_or(0);
                stored.updated += answer["updated"].as_u64().unwrap_or(0);
            }
            401 => bail!(
                "the engine at {base} refused the API token (401): check `api.token`, RECUERDA_API_TOKEN or `--token`"
            ),
            422 => {
                for problem in answer["invalid"].as_array().into_iter().flatten() {
                    let line = problem["index"]
                        .as_u64()
                        .and_then(|i| chunk.get(i as usize))
                        .map(|r| r.line)
                        .unwrap_or(0);
                    let errors: Vec<String> = problem["errors"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| format!("{}: {}", e["field"].as_str().unwrap_or(""), e["error"].as_str().unwrap_or("")))
                        .collect();
                    eprintln!("line {line}: {}", errors.join("; "));
                }
                bail!(
                    "the engine refused rows this import had accepted (listed above){}",
                    progress(&stored)
                );
            }
            _ => bail!(
                "the engine answered HTTP {status}: {}{}",
                answer["error"].as_str().unwrap_or("(no details)"),
                progress(&stored)
            ),
        }
    }
    Ok(stored)
}

/// What an interrupted import already stored (running it again is safe: stored rows are
/// updated in place, not duplicated).
fn progress(stored: &Stored) -> String {
    let n = stored.created + stored.updated;
    if n == 0 {
        "; nothing was imported".into()
    } else {
        format!("; {n} appointments were already imported: running the import again is safe")
    }
}

/// Chunks of at most [`CHUNK_ROWS`] rows and about [`CHUNK_BYTES`] bytes.
fn chunks(rows: &[Row]) -> Vec<&[Row]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let size = row.body.to_string().len() + 1;
        if i > start && (i - start >= CHUNK_ROWS || bytes + size > CHUNK_BYTES) {
            out.push(&rows[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

/// A reqwest error's text without its URL.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "the engine");
    }
    text
}
