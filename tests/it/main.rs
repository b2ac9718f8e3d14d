//! One integration-test binary: it links once.

mod bench;
mod cli;
mod client_sim;
mod crash;
mod demo;
mod deploy;
mod engine;
mod hostile;
mod import;
mod logs;
mod provider;
mod render;
mod replay;
mod rules;
mod schedule;
mod simulate;
mod simulator;
mod torture;

/// The JSON body of `request`'s answer (tests: any failure is the test's failure).
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// Like [`json_of`], `None` on any failure (for polling with `eventually`).
pub async fn try_json_of(request: reqwest::RequestBuilder) -> Option<serde_json::Value> {
    request.send().await.ok()?.json().await.ok()
}
