//! `recuerda send`: one template message through the provider, checked before any call.

use crate::cli::templates::read_local_templates;
use crate::config::Config;
use crate::provider::{Client, SendRequest};
use anyhow::Context;

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The provider's numeric template id (e.g. `990`).
    #[arg(long, value_name = "ID")]
    pub template: String,
    /// The patient's mobile: `573102334455`, `+57 310 233 4455`, `310 233 4455`.
    #[arg(long, value_name = "MOBILE")]
    pub to: String,
    /// One per `{n}` placeholder, in order: `--var Carlos --var '$100'`.
    #[arg(long = "var", value_name = "TEXT")]
    pub vars: Vec<String>,
    /// Public http(s) URL of a file to attach (pdf, jpg, mp3, txt, docx, xlsx, zip, mp4, pptx,
    /// png, jpeg).
    #[arg(long, value_name = "URL")]
    pub media: Option<String>,
    /// Value returned with the patient's reply (at most 1,000 characters).
    #[arg(long, value_name = "TEXT")]
    pub custom_field: Option<String>,
}

pub async fn run(args: SendArgs, config: Config) -> anyhow::Result<()> {
    let template: crate::provider::TemplateId =
        args.template.parse().context("nothing was sent")?;
    let request = SendRequest::from_parts(
        template.get(),
        &args.to,
        args.vars,
        args.media.as_deref(),
        args.custom_field.as_deref(),
    )
    .context("nothing was sent")?;
    check_against_local_template(&request, &config)?;
    let client = Client::new(&config.provider)?;
    let message_id = client.send(&request).await.with_context(|| {
        format!(
            "sending template {} to {}",
            request.template,
            request.mobile.masked()
        )
    })?;
    println!("{message_id}");
    Ok(())
}

/// When `templates/` has a file for this id, a variable count that differs from its body's
/// placeholders is refused here rather than by the provider (code 8).
fn check_against_local_template(request: &SendRequest, config: &Config) -> anyhow::Result<()> {
    let (files, _unreadable) = read_local_templates(&config.templates_dir);
    let local = files
        .iter()
        .find(|f| f.template.id == Some(request.template.get()));
    if let Some(file) = local {
        let expected = crate::provider::count_placeholders(&file.template.body);
        request.variables.check_count(expected).with_context(|| {
            format!(
                "nothing was sent: template {} (`{}`)",
                request.template,
                file.path.display()
            )
        })?;
    }
    Ok(())
}
