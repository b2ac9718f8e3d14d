//! `recuerda templates`: list the provider's templates, or pull their approved bodies into the
//! template files under `templates_dir`.

use crate::config::Config;
use crate::provider::{Client, RemoteTemplate};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct TemplatesArgs {
    /// Write the provider's bodies into `templates_dir`: update files whose `name` matches,
    /// create `<id>-<name>.yaml` for templates with an id and no file.
    #[arg(long)]
    pub pull: bool,
}

pub async fn run(args: TemplatesArgs, config: Config) -> anyhow::Result<()> {
    let client = Client::new(&config.provider)?;
    let remote = client
        .templates()
        .await
        .context("asking the provider for its templates")?;
    if args.pull {
        let report = pull(&remote, &config.templates_dir)?;
        report.print();
    } else {
        print_list(&remote);
    }
    Ok(())
}

fn print_list(remote: &[RemoteTemplate]) {
    if remote.is_empty() {
        println!("the provider lists no templates for this account");
        return;
    }
    let ids: Vec<String> = remote
        .iter()
        .map(|t| t.id.map_or_else(|| "-".to_string(), |id| id.to_string()))
        .collect();
    let id_width = ids
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(2)
        .max(2);
    let name_width = remote
        .iter()
        .map(|t| t.name.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    let status_width = remote
        .iter()
        .map(|t| t.status.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:<id_width$}  {:<name_width$}  {:<status_width$}  VARS  BODY",
        "ID", "NAME", "STATUS"
    );
    for (t, id) in remote.iter().zip(&ids) {
        println!(
            "{id:<id_width$}  {:<name_width$}  {:<status_width$}  {:<4}  {}",
            t.name,
            t.status,
            t.placeholders,
            one_line(&t.body)
        );
    }
}

/// Newlines shown as `\n`, so each template stays on one line.
fn one_line(body: &str) -> String {
    body.replace("\r\n", "\\n").replace('\n', "\\n")
}

// ---- template files -------------------------------------------------------------------------

/// A template file's contents, read loosely: pulling must cope with half-written files.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct TemplateFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub variables: Vec<String>,
    /// Keys this command does not know are written back untouched.
    #[serde(flatten)]
    pub extra: serde_yaml::Mapping,
}

#[derive(Debug, Clone)]
pub(crate) struct LocalTemplate {
    pub path: PathBuf,
    pub template: TemplateFile,
    /// Comment lines at the top of the file, kept when the file is rewritten.
    pub header: String,
}

/// Reads every `*.yaml`/`*.yml` in `dir`, sorted by path. Files that cannot be read or parsed
/// are returned apart, with the reason, so that they are reported and never overwritten.
pub(crate) fn read_local_templates(dir: &Path) -> (Vec<LocalTemplate>, Vec<(PathBuf, String)>) {
    let mut files = Vec::new();
    let mut unreadable = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (files, unreadable);
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    paths.sort();
    for path in paths {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                unreadable.push((path, e.to_string()));
                continue;
            }
        };
        match serde_yaml::from_str::<TemplateFile>(&text) {
            Ok(template) => {
                let header = text
                    .lines()
                    .take_while(|l| l.trim_start().starts_with('#'))
                    .map(|l| format!("{l}\n"))
                    .collect();
                files.push(LocalTemplate {
                    path,
                    template,
                    header,
                });
            }
            Err(e) => unreadable.push((path, e.to_string())),
        }
    }
    (files, unreadable)
}

// ---- pull -----------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct PullReport {
    created: Vec<PathBuf>,
    updated: Vec<PathBuf>,
    unchanged: Vec<PathBuf>,
    warnings: Vec<String>,
    not_written: Vec<String>,
}

impl PullReport {
    fn print(&self) {
        for path in &self.created {
            println!(
                "created {} (edit its `variables` before using it)",
                path.display()
            );
        }
        for path in &self.updated {
            println!("updated {}", path.display());
        }
        for path in &self.unchanged {
            println!("unchanged {}", path.display());
        }
        for warning in &self.warnings {
            eprintln!("warning: {warning}");
        }
        for note in &self.not_written {
            eprintln!("not written: {note}");
        }
        println!(
            "{} created, {} updated, {} unchanged, {} not written",
            self.created.len(),
            self.updated.len(),
            self.unchanged.len(),
            self.not_written.len()
        );
    }
}

const NEW_FILE_HEADER: &str = "\
# Pulled from the provider by `recuerda templates --pull`.
# EDIT `variables`: each entry is a placeholder, one per {n} in `body`, in order. Replace it
# with the Handlebars expression that fills that place, e.g. \"{{primer_nombre appointment.paciente}}\".
# Until then a send with this template fails: the placeholders name no value.
";

fn pull(remote: &[RemoteTemplate], dir: &Path) -> anyhow::Result<PullReport> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the templates folder `{}`", dir.display()))?;
    let (mut locals, unreadable) = read_local_templates(dir);
    let mut report = PullReport::default();
    for (path, reason) in &unreadable {
        report.warnings.push(format!(
            "`{}` was skipped and left as it is: {reason}",
            path.display()
        ));
    }
    for t in remote {
        let by_name = locals
            .iter()
            .position(|l| !t.name.trim().is_empty() && l.template.name.trim() == t.name.trim());
        let by_id = || {
            t.id.and_then(|id| locals.iter().position(|l| l.template.id == Some(id)))
        };
        match by_name.or_else(by_id) {
            Some(index) => update_file(&mut locals[index], t, &mut report)?,
            None => match t.id {
                Some(id) => create_file(dir, id, t, &mut report)?,
                None => report.not_written.push(format!(
                    "template `{name}` has no id in the provider's answer and no file with that name: \
                     add `{dir}/<id>-{slug}.yaml` with `id:` (the number shown for it in the contacto-virtual panel) \
                     and `name: {name}`, then run `recuerda templates --pull` again",
                    name = t.name,
                    dir = dir.display(),
                    slug = slug(&t.name),
                )),
            },
        }
    }
    Ok(report)
}

fn update_file(
    local: &mut LocalTemplate,
    remote: &RemoteTemplate,
    report: &mut PullReport,
) -> anyhow::Result<()> {
    let expected = local.template.variables.len();
    if remote.placeholders != expected {
        report.warnings.push(format!(
            "`{}`: the provider's body of `{}` has {} placeholders but the file's `variables` has {}: edit `variables` to match",
            local.path.display(),
            remote.name,
            remote.placeholders,
            expected
        ));
    }
    let mut updated = local.template.clone();
    updated.body = remote.body.clone();
    updated.name = remote.name.clone();
    if updated.id.is_none() {
        updated.id = remote.id;
    }
    if updated.body == local.template.body
        && updated.name == local.template.name
        && updated.id == local.template.id
    {
        report.unchanged.push(local.path.clone());
        return Ok(());
    }
    write_template(&local.path, &local.header, &updated)?;
    local.template = updated;
    report.updated.push(local.path.clone());
    Ok(())
}

fn create_file(
    dir: &Path,
    id: u32,
    remote: &RemoteTemplate,
    report: &mut PullReport,
) -> anyhow::Result<()> {
    let path = dir.join(format!("{id}-{}.yaml", slug(&remote.name)));
    if path.exists() {
        report.not_written.push(format!(
            "template {id} `{}`: `{}` exists but does not parse as a template file; fix or remove it, then pull again",
            remote.name,
            path.display()
        ));
        return Ok(());
    }
    let template = TemplateFile {
        id: Some(id),
        name: remote.name.clone(),
        body: remote.body.clone(),
        variables: (1..=remote.placeholders)
            .map(|n| format!("{{{{EDITAR_variable_{n}}}}}"))
            .collect(),
        extra: serde_yaml::Mapping::new(),
    };
    write_template(&path, NEW_FILE_HEADER, &template)?;
    report.created.push(path);
    Ok(())
}

/// Writes through a temporary file and a rename, so a reader (or the engine's reload) never
/// sees half a file.
fn write_template(path: &Path, header: &str, template: &TemplateFile) -> anyhow::Result<()> {
    let yaml = serde_yaml::to_string(template)
        .with_context(|| format!("cannot write `{}` as YAML", path.display()))?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "template.yaml".into());
    let temp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(header.as_bytes())?;
        file.write_all(yaml.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(e).with_context(|| format!("cannot write `{}`", path.display()));
    }
    Ok(())
}

/// `Asignación de cita` → `asignacion-de-cita`: a file name that survives any file system.
fn slug(name: &str) -> String {
    let mut slug = String::new();
    for c in name.trim().to_lowercase().chars() {
        let c = match c {
            'á' | 'à' | 'ä' | 'â' => 'a',
            'é' | 'è' | 'ë' | 'ê' => 'e',
            'í' | 'ì' | 'ï' | 'î' => 'i',
            'ó' | 'ò' | 'ö' | 'ô' => 'o',
            'ú' | 'ù' | 'ü' | 'û' => 'u',
            'ñ' => 'n',
            c => c,
        };
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug: String = slug.trim_matches('-').chars().take(60).collect();
    let slug = slug.trim_end_matches('-').to_string();
    if slug.is_empty() {
        "plantilla".to_string()
    } else {
        slug
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(slug("Asignación de cita"), "asignacion-de-cita");
        assert_eq!(slug("  ¡Hola, Ñandú!  "), "hola-nandu");
        assert_eq!(slug("***"), "plantilla");
    }

    #[test]
    fn template_file_round_trips_with_multiline_body_and_extra_keys() {
        let t = TemplateFile {
            id: Some(990),
            name: "Recordatorio: cita".into(),
            body: "¡Hola *{1}*!\n\nFecha: *{2}* [x] #no-comment".into(),
            variables: vec!["{{appointment.paciente}}".into(), "$100".into()],
            extra: serde_yaml::from_str("notes: keep me").unwrap(),
        };
        let yaml = serde_yaml::to_string(&t).unwrap();
        let back: TemplateFile = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(back.body, t.body);
        assert_eq!(back.name, t.name);
        assert_eq!(back.variables, t.variables);
        assert_eq!(back.extra, t.extra);
        assert!(yaml.starts_with("id: 990\n"), "{yaml}");
    }
}
