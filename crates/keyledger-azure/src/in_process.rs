//! An azure_core `HttpClient` that hands each request to a keyledger-vault-sim router in
//! process: no sockets, no TLS. For dev mode and fast tests of the real SDK client.

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::error::{Error, ErrorKind};
use azure_core::http::headers::{HeaderName, HeaderValue, Headers};
use azure_core::http::request::{Body, Request};
use azure_core::http::{AsyncRawResponse, HttpClient, StatusCode, Transport};
use http_body_util::BodyExt as _;
use keyledger_vault_sim::Vault;
use tower::ServiceExt as _;

/// Routes every request, whatever its host (vault or authority), to the simulated vault's
/// router. The `Host` header is set from the URL, so `kid`s name the host the client used.
/// When the vault's faults say `unreachable`, requests fail as I/O errors, as a refused
/// connection would.
#[derive(Clone)]
pub struct InProcessTransport {
    vault: Arc<Vault>,
    router: axum::Router,
}

impl std::fmt::Debug for InProcessTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessTransport").finish_non_exhaustive()
    }
}

impl InProcessTransport {
    pub fn new(vault: Arc<Vault>) -> Self {
        let router = keyledger_vault_sim::router(vault.clone());
        Self { vault, router }
    }

    /// As an azure_core transport for `ClientOptions::transport`.
    pub fn transport(vault: Arc<Vault>) -> Transport {
        Transport::new(Arc::new(Self::new(vault)))
    }
}

fn io_error(message: &'static str) -> Error {
    Error::with_message(ErrorKind::Io, message)
}

#[async_trait]
impl HttpClient for InProcessTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        if self.vault.faults().unreachable {
            return Err(io_error("connection refused (simulated vault unreachable)"));
        }
        let url = request.url();
        let body = match request.body() {
            Body::Bytes(b) => b.clone(),
            _ => return Err(io_error("streaming bodies are not supported in process")),
        };
        let mut builder = http::Request::builder()
            .method(request.method().as_ref())
            .uri(request.path_and_query());
        for (name, value) in request.headers().iter() {
            builder = builder.header(name.as_str(), value.as_str());
        }
        if let Some(host) = url.host_str() {
            let host = match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_owned(),
            };
            builder = builder.header(http::header::HOST, host);
        }
        let http_request = builder
            .body(axum::body::Body::from(body))
            .map_err(|_| io_error("could not build the in-process request"))?;
        let response = self
            .router
            .clone()
            .oneshot(http_request)
            .await
            .map_err(|_| io_error("in-process router failed"))?;
        let (parts, body) = response.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|_| io_error("could not read the in-process response"))?
            .to_bytes();
        let mut headers = Headers::new();
        for (name, value) in parts.headers.iter() {
            if let Ok(v) = value.to_str() {
                headers.insert(
                    HeaderName::from(name.as_str().to_owned()),
                    HeaderValue::from(v.to_owned()),
                );
            }
        }
        Ok(AsyncRawResponse::from_bytes(
            StatusCode::from(parts.status.as_u16()),
            headers,
            bytes,
        ))
    }
}
