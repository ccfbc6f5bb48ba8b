//! The one API client of the CLI: [`ApiArgs`] (`--api URL` or `PLEXI_API`,
//! `--token` or `PLEXI_TOKEN`) and everything that talks HTTP to a node:
//! URLs and path encoding, sending, and turning a non-2xx answer into an
//! error carrying the API's message. [`Pool`] is the same for many requests
//! in a row over several nodes (`plexi bench`).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use clap::Args;
use plexi_api::model::NodeList;
use reqwest::{Method, RequestBuilder, Response};

pub use plexi_util::types::Consistency;

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Base URL of any node's API.
    #[arg(
        long,
        env = "PLEXI_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api: String,
    /// Bearer token (read or admin).
    #[arg(long, env = "PLEXI_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

/// Parses `--consistency` before anything is sent.
pub fn parse_consistency(s: &str) -> Result<Consistency, String> {
    s.parse()
        .map_err(|e: plexi_util::types::UnknownName| e.to_string())
}

/// `http://host:port` from `host:port` or a URL, without a trailing slash.
pub fn base_url(api: &str) -> String {
    let base = api.trim().trim_end_matches('/');
    if base.starts_with("http://") || base.starts_with("https://") {
        base.to_string()
    } else {
        format!("http://{base}")
    }
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The API path of an object.
pub fn data_path(data_id: &str) -> String {
    format!(
        "/api/v1/clustering/storage/data/{}",
        encode_segment(data_id)
    )
}

/// Turns a non-2xx answer into an error carrying the API's message.
pub async fn check(res: Response) -> Result<Response> {
    let status = res.status();
    if status.is_success() {
        return Ok(res);
    }
    let text = res.text().await.unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let reason = status.canonical_reason().unwrap_or("");
    match (
        body["error"]["code"].as_str(),
        body["error"]["message"].as_str(),
    ) {
        (Some(code), Some(msg)) => bail!("{} {reason} ({code}): {msg}", status.as_u16()),
        (None, Some(msg)) => bail!("{} {reason}: {msg}", status.as_u16()),
        _ if !text.trim().is_empty() && text.len() < 512 => {
            bail!("{} {reason}: {}", status.as_u16(), text.trim())
        }
        _ => bail!("{} {reason}: no error message", status.as_u16()),
    }
}

/// A request to `url` with the token, the query (if any) and a raw body
/// (if any, as `application/octet-stream`).
fn build(
    client: &reqwest::Client,
    method: Method,
    url: String,
    token: Option<&str>,
    query: &[(&str, String)],
    body: Option<Bytes>,
) -> RequestBuilder {
    let mut req = client.request(method, url);
    if !query.is_empty() {
        req = req.query(query);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(b);
    }
    req
}

impl ApiArgs {
    /// The base URL of this API, normalised by [`base_url`].
    pub fn base(&self) -> String {
        base_url(&self.api)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// Sends a request; a transport failure names the API, a non-2xx
    /// answer becomes an error with the API's message.
    async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.api))?;
        check(res).await
    }

    /// Sends one request and returns the answer if it is a success; a
    /// failure becomes an error with the API's message.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<Response> {
        let client = reqwest::Client::new();
        let token = self.token.as_deref();
        self.send(build(&client, method, self.url(path), token, query, body))
            .await
    }

    /// A JSON answer to a request.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<T> {
        decode(self.request(method, path, query, body).await?).await
    }

    /// GETs a JSON answer.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, &[], None).await
    }

    /// POSTs a JSON body and decodes the JSON answer.
    pub async fn post_json<T: serde::de::DeserializeOwned, B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let client = reqwest::Client::new();
        let req = build(
            &client,
            Method::POST,
            self.url(path),
            self.token.as_deref(),
            &[],
            None,
        );
        decode(self.send(req.json(body)).await?).await
    }

    /// This API first, then the API of every other node it lists (to poll
    /// when the one given stops answering: it may be the node being
    /// updated). The token goes along.
    pub async fn with_alternates(&self) -> Vec<ApiArgs> {
        let given = self.base();
        let scheme = if given.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        let mut out = vec![self.clone()];
        if let Ok(list) = self.get::<NodeList>("/api/v1/clustering/nodes").await {
            for n in list.nodes {
                let url = format!("{scheme}://{}", n.api_address);
                if n.api_address.is_empty() || n.is_local || url == given {
                    continue;
                }
                out.push(ApiArgs {
                    api: url,
                    token: self.token.clone(),
                });
            }
        }
        out
    }
}

async fn decode<T: serde::de::DeserializeOwned>(res: Response) -> Result<T> {
    res.json().await.context("undecodable response")
}

/// One reused HTTP client over several node APIs, requests going
/// round-robin: pooled connections and a timeout per request, errors as
/// short text (for counting, not for exiting).
pub struct Pool {
    client: reqwest::Client,
    bases: Vec<String>,
    token: Option<String>,
}

impl Pool {
    /// A pool over `apis` (host:port or URLs; blanks ignored) keeping up to
    /// `max_idle_per_host` connections open.
    pub fn new(
        apis: &[String],
        token: Option<String>,
        timeout: Duration,
        max_idle_per_host: usize,
    ) -> Result<Pool> {
        let bases: Vec<String> = apis
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(base_url)
            .collect();
        if bases.is_empty() {
            bail!("no --api given");
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(max_idle_per_host)
            .tcp_nodelay(true)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Pool {
            client,
            bases,
            token,
        })
    }

    /// The base URLs, normalised.
    pub fn bases(&self) -> &[String] {
        &self.bases
    }

    /// `GET /health` of every API (no token); the first that fails is the
    /// error.
    pub async fn probe(&self) -> Result<()> {
        for b in &self.bases {
            let res = self
                .client
                .get(format!("{b}/health"))
                .send()
                .await
                .with_context(|| format!("cannot reach {b}"))?;
            check(res).await.with_context(|| format!("{b}/health"))?;
        }
        Ok(())
    }

    /// One request to the API of `turn` (round-robin); a transport failure
    /// is [`describe_reqwest`], an API error its message.
    pub async fn send(
        &self,
        turn: usize,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<Response, String> {
        let base = &self.bases[turn % self.bases.len()];
        let url = format!("{base}{path}");
        let req = build(
            &self.client,
            method,
            url,
            self.token.as_deref(),
            query,
            body,
        );
        let res = req.send().await.map_err(|e| describe_reqwest(&e))?;
        check(res).await.map_err(|e| format!("{e:#}"))
    }
}

/// A transport error in a few words: timeout, connection failure, or the
/// error with its causes.
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "request timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s.push_str(": ");
            s.push_str(&inner.to_string());
            src = inner.source();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalised() {
        assert_eq!(base_url("127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(base_url(" http://h:1/ "), "http://h:1");
        assert_eq!(base_url("https://h"), "https://h");
    }

    #[test]
    fn data_ids_are_encoded() {
        assert_eq!(
            data_path("a b/c?d"),
            "/api/v1/clustering/storage/data/a%20b%2Fc%3Fd"
        );
        assert_eq!(
            data_path("bench-00000001"),
            "/api/v1/clustering/storage/data/bench-00000001"
        );
        assert_eq!(encode_segment("é"), "%C3%A9");
    }
}
