//! The `send` call's `multipart/form-data` body, built as one buffer.
//!
//! Why not reqwest's `multipart::Form`: it streams each part as separate chunks (headers,
//! value, line end) that hyper polls and gathers one by one, plus a percent-encoding pass
//! per part: about a tenth of the provider request's CPU, on every send. Our fields are a
//! handful of short texts with fixed ASCII names, so the whole body is known up front.

use rand::distr::{Alphanumeric, SampleString};

/// A body and the `Content-Type` that names its boundary.
pub(super) struct Multipart {
    pub content_type: String,
    pub body: Vec<u8>,
}

/// `fields` as `multipart/form-data` (RFC 7578). Names must be plain ASCII without quotes
/// (ours are the provider's field names); values are any text.
pub(super) fn form(fields: &[(&str, &str)]) -> Multipart {
    let boundary = loop {
        let candidate = format!(
            "recuerda-{}",
            Alphanumeric.sample_string(&mut rand::rng(), 24)
        );
        // 24 random characters never turn up in a value in practice; checked all the same,
        // since a value holding the boundary would cut the body.
        if !fields.iter().any(|(_, v)| v.contains(&candidate)) {
            break candidate;
        }
    };
    let size: usize = fields
        .iter()
        // `--`, the disposition line with its quotes, the blank line and the part's end.
        .map(|(n, v)| boundary.len() + n.len() + v.len() + 49)
        .sum::<usize>()
        + boundary.len()
        + 6;
    let mut body = Vec::with_capacity(size);
    for (name, value) in fields {
        debug_assert!(name.bytes().all(|b| b.is_ascii_graphic() && b != b'"'));
        for piece in [
            "--",
            &boundary,
            "\r\nContent-Disposition: form-data; name=\"",
            name,
            "\"\r\n\r\n",
            value,
            "\r\n",
        ] {
            body.extend_from_slice(piece.as_bytes());
        }
    }
    for piece in ["--", &boundary, "--\r\n"] {
        body.extend_from_slice(piece.as_bytes());
    }
    debug_assert_eq!(body.len(), size, "the size above is exact");
    Multipart {
        content_type: format!("multipart/form-data; boundary={boundary}"),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What axum's extractor (multer, as the simulator uses) reads back is what was put in,
    /// non-ASCII, line breaks and an empty value included.
    #[tokio::test]
    async fn a_multipart_parser_reads_back_every_field() {
        use axum::extract::{FromRequest, Multipart as Extract};
        let fields = [
            ("login", "clinica@example.com"),
            ("template_variables", "Ana María,jueves 26,línea\r\nnueva"),
            ("custom_field", ""),
        ];
        let m = form(&fields);
        let request = axum::http::Request::builder()
            .method("POST")
            .header("content-type", &m.content_type)
            .header("content-length", m.body.len())
            .body(axum::body::Body::from(m.body))
            .unwrap();
        let mut parts = Extract::from_request(request, &()).await.unwrap();
        let mut got = Vec::new();
        while let Some(field) = parts.next_field().await.unwrap() {
            let name = field.name().unwrap().to_string();
            got.push((name, field.text().await.unwrap()));
        }
        let want: Vec<(String, String)> = fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(got, want);
    }
}
