//! One call: [`Request`] builds it and sends it with fail-over between the client's
//! servers; [`Reply`] is a 2xx answer, decoded on demand.

use super::error::{self, ClientError, DecodeKind, UrlError};
use super::{Answer, Client};
use reqwest::{Method, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::time::Duration;

impl Client {
    /// A call of `method` on the path made of `segments` (each percent-encoded).
    pub fn request(&self, method: Method, segments: &[&str]) -> Request<'_> {
        Request {
            client: self,
            what: format!("{method} /{}", segments.join("/")),
            method,
            segments: segments.iter().map(|s| (*s).to_owned()).collect(),
            query: Vec::new(),
            headers: Vec::new(),
            token: None,
            body: None,
            timeout: None,
        }
    }
}

/// One call being built; [`Request::send`] sends it.
pub struct Request<'c> {
    client: &'c Client,
    what: String,
    method: Method,
    segments: Vec<String>,
    query: Vec<(String, String)>,
    headers: Vec<(&'static str, String)>,
    token: Option<String>,
    body: Option<Result<Vec<u8>, String>>,
    timeout: Option<Duration>,
}

impl Request<'_> {
    /// Adds a query pair.
    pub fn query(mut self, key: &str, value: &str) -> Self {
        self.query.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    /// The bearer token of this call (instead of the client's).
    pub fn token(mut self, token: Option<&str>) -> Self {
        self.token = token.map(str::to_owned);
        self
    }

    /// A JSON body.
    pub fn json<B: Serialize + ?Sized>(mut self, body: &B) -> Self {
        self.body = Some(serde_json::to_vec(body).map_err(|e| e.to_string()));
        self
    }

    /// A body already encoded as JSON.
    pub fn json_bytes(mut self, body: Vec<u8>) -> Self {
        self.body = Some(Ok(body));
        self
    }

    /// The timeout of this call (instead of the client's).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Sends the call, moving on to the next server on connection errors (each
    /// server is tried at most once per call).
    ///
    /// # Errors
    /// Transport failure, or a non-2xx answer ([`ClientError::Status`]).
    pub async fn send(self) -> Result<Reply, ClientError> {
        let c = self.client;
        let body = match self.body {
            Some(Err(message)) => {
                return Err(ClientError::Encode {
                    what: self.what,
                    message,
                });
            }
            Some(Ok(b)) => Some(b),
            None => None,
        };
        let token = self.token.as_deref().or(c.token.as_deref());
        let segments: Vec<&str> = self.segments.iter().map(String::as_str).collect();
        let n = c.servers.len();
        let mut last = None;
        for _ in 0..n {
            let idx = c.current.load(Ordering::Relaxed) % n;
            let url = build_url(&c.servers[idx], &segments, &self.query)?;
            let mut req = c
                .http
                .request(self.method.clone(), url.clone())
                .timeout(self.timeout.unwrap_or(c.timeout))
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            for (name, value) in &self.headers {
                req = req.header(*name, value);
            }
            if let Some(b) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            match req.send().await {
                Ok(resp) => return reply(self.what, c.server(idx), resp).await,
                Err(e) => {
                    let err = error::transport(&self.what, c.server(idx), url.as_str(), &e);
                    if e.is_connect() && n > 1 {
                        // Fail over; a concurrent call may already have moved on.
                        let _ = c.current.compare_exchange(
                            idx,
                            (idx + 1) % n,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                        tracing::warn!(url = %url, "control plane unreachable, trying the next one");
                        last = Some(err);
                        continue;
                    }
                    return Err(err);
                }
            }
        }
        Err(last.unwrap_or(ClientError::Url(UrlError::None)))
    }

    /// Sends the call and decodes a 2xx body (an empty one as JSON `null`).
    ///
    /// # Errors
    /// As [`Request::send`], or a body that does not decode.
    pub async fn fetch<T: DeserializeOwned>(self) -> Result<T, ClientError> {
        self.send().await?.json()
    }

    /// Sends the call and decodes a 2xx body, keeping the JSON as sent.
    ///
    /// # Errors
    /// As [`Request::send`], an empty body, or a body that does not decode.
    pub async fn answer<T: DeserializeOwned>(self) -> Result<Answer<T>, ClientError> {
        let reply = self.send().await?;
        reply.answer()?.ok_or_else(|| ClientError::Decode {
            what: reply.what.clone(),
            kind: DecodeKind::Empty,
            message: "empty body".into(),
        })
    }
}

/// A 2xx answer.
#[derive(Debug)]
pub struct Reply {
    what: String,
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// True when the body is empty or blank.
    pub fn is_empty(&self) -> bool {
        self.body.iter().all(u8::is_ascii_whitespace)
    }

    /// Decodes the body; an empty body decodes as JSON `null`.
    ///
    /// # Errors
    /// A body that is not a `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        let bytes: &[u8] = if self.is_empty() { b"null" } else { &self.body };
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
            what: self.what.clone(),
            kind: if self.is_empty() {
                DecodeKind::Empty
            } else if e.is_data() {
                DecodeKind::Shape
            } else {
                DecodeKind::NotJson
            },
            message: e.to_string(),
        })
    }

    /// Decodes the body keeping the JSON as sent; `None` for an empty body.
    ///
    /// # Errors
    /// A body that is not JSON, or not a `T`.
    pub fn answer<T: DeserializeOwned>(&self) -> Result<Option<Answer<T>>, ClientError> {
        if self.is_empty() {
            return Ok(None);
        }
        let decode_error = |kind, e: serde_json::Error| ClientError::Decode {
            what: self.what.clone(),
            kind,
            message: e.to_string(),
        };
        let raw: Value =
            serde_json::from_slice(&self.body).map_err(|e| decode_error(DecodeKind::NotJson, e))?;
        let value = T::deserialize(&raw).map_err(|e| decode_error(DecodeKind::Shape, e))?;
        Ok(Some(Answer { raw, value }))
    }
}

/// Reads the answer: the body of a 2xx, else a [`ClientError::Status`].
async fn reply(what: String, server: &str, resp: reqwest::Response) -> Result<Reply, ClientError> {
    let status = resp.status();
    let url = resp.url().to_string();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = resp
        .bytes()
        .await
        .map_err(|e| error::transport(&what, server, &url, &e))?;
    if !status.is_success() {
        return Err(error::status(&what, status.as_u16(), &body, retry_after));
    }
    Ok(Reply {
        what,
        status: status.as_u16(),
        body: Vec::from(body),
    })
}

/// Parses a base URL: trims a trailing `/`, assumes `http://` when no scheme is given.
pub(super) fn parse_base_url(server: &str) -> Result<Url, UrlError> {
    let s = server.trim().trim_end_matches('/');
    if s.is_empty() {
        return Err(UrlError::Empty);
    }
    let with_scheme = if s.contains("://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    let url = Url::parse(&with_scheme).map_err(|e| UrlError::Invalid {
        url: server.to_owned(),
        reason: e.to_string(),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(UrlError::NotHttp(server.to_owned()));
    }
    Ok(url)
}

/// Appends percent-encoded path segments and query pairs to the base URL.
fn build_url(base: &Url, segments: &[&str], query: &[(String, String)]) -> Result<Url, UrlError> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| UrlError::NotABase(base.to_string()))?
        .pop_if_empty()
        .extend(segments);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_built_from_the_base_with_encoded_segments() -> anyhow::Result<()> {
        let base = parse_base_url("http://127.0.0.1:8080/")?;
        let q = [("timeout_ms".to_owned(), "30000".to_owned())];
        let u = build_url(&base, &["v1", "tasks", "01AB.my queue/x", "wait"], &q)?;
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:8080/v1/tasks/01AB.my%20queue%2Fx/wait?timeout_ms=30000"
        );
        let base = parse_base_url("https://example.com/muster//")?;
        assert_eq!(
            build_url(&base, &["v1", "queues"], &[])?.as_str(),
            "https://example.com/muster/v1/queues"
        );
        let base = parse_base_url("localhost:8080")?;
        assert_eq!(
            build_url(&base, &["v1", "nodes"], &[])?.as_str(),
            "http://localhost:8080/v1/nodes"
        );
        assert_eq!(parse_base_url(""), Err(UrlError::Empty));
        assert_eq!(
            parse_base_url("ftp://x"),
            Err(UrlError::NotHttp("ftp://x".into()))
        );
        Ok(())
    }

    #[test]
    fn empty_and_bad_bodies_are_told_apart() {
        let r = |body: &str| Reply {
            what: "GET /v1/x".into(),
            status: 200,
            body: body.as_bytes().to_vec(),
        };
        assert!(r(" \n").answer::<Value>().expect("empty").is_none());
        assert_eq!(r("").json::<Option<u8>>().expect("null"), None);
        let kind = |e: ClientError| match e {
            ClientError::Decode { kind, .. } => Some(kind),
            _ => None,
        };
        assert_eq!(
            kind(r("{").answer::<Value>().unwrap_err()),
            Some(DecodeKind::NotJson)
        );
        assert_eq!(
            kind(r("[1]").answer::<u8>().unwrap_err()),
            Some(DecodeKind::Shape)
        );
        assert_eq!(
            kind(r("").json::<u8>().unwrap_err()),
            Some(DecodeKind::Empty)
        );
        let a = r(r#"{"a": 1}"#)
            .answer::<Value>()
            .expect("ok")
            .expect("some");
        assert_eq!(a.raw, serde_json::json!({"a": 1}));
    }
}
