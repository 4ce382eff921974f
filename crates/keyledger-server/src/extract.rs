//! Extractors that turn bad input into problem+json: the caller, JSON bodies, query strings,
//! path ids and the command headers.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use keyledger_domain::{Actor, CommandId, CorrelationId, HostAllowList, KeyIdentifier, StreamVersion};
use serde::de::DeserializeOwned;

use crate::Shared;
use crate::problem::{FieldError, Problem};

/// The authenticated actor of a `/v1` request.
pub(crate) struct Caller(pub Actor);

/// The actor a middleware (the idempotency layer) already authenticated, so that an Entra ID
/// token is verified once per request. Only the server puts it in a request's extensions.
#[derive(Clone)]
pub(crate) struct Authenticated(pub Actor);

impl FromRequestParts<Shared> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, Problem> {
        if let Some(Authenticated(actor)) = parts.extensions.get::<Authenticated>() {
            return Ok(Caller(actor.clone()));
        }
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        Ok(Caller(state.services.tokens.authenticate(header).await?))
    }
}

pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Problem {
    Problem::invalid(vec![FieldError {
        field: field.to_owned(),
        message: message.into(),
    }])
}

/// Fields whose value a serde message might echo; their errors say less.
const QUIET_FIELDS: [&str; 1] = ["client_secret"];

fn field_error(path: String, message: String) -> Problem {
    let message = if QUIET_FIELDS.iter().any(|f| path.contains(f)) {
        "invalid value (must be a non-empty string)".to_owned()
    } else {
        message
    };
    invalid(if path == "." { "" } else { &path }, message)
}

/// A JSON body: 413 above the size limit, 400 with the failing field otherwise.
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Shared> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &Shared) -> Result<Self, Problem> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
            let json = ct.starts_with("application/json")
                || ct.split(';').next().is_some_and(|m| m.ends_with("+json"));
            if !json {
                return Err(invalid("content-type", "the body must be application/json"));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::payload_too_large(state.config.max_body_bytes)
            } else {
                invalid("", "the body could not be read")
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON document, naming the failing field.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        field_error(path, json_message(&inner))
    })?;
    de.end().map_err(|e| invalid("", json_message(&e)))?;
    Ok(value)
}

fn json_message(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            format!("malformed JSON at line {} column {}", e.line(), e.column())
        }
        // serde's own wording ("missing field `name`", "invalid type: …"), without position.
        Category::Data => {
            let text = e.to_string();
            match text.rfind(" at line ") {
                Some(i) => text[..i].to_owned(),
                None => text,
            }
        }
    }
}

/// A query string: 400 naming the parameter.
pub(crate) struct Query<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequestParts<Shared> for Query<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &Shared) -> Result<Self, Problem> {
        let Some(q) = parts.uri.query().filter(|q| !q.is_empty()) else {
            return Ok(Query(T::default()));
        };
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| field_error(e.path().to_string(), e.into_inner().to_string()))
    }
}

/// A position or version from a query or a header, or 400 naming `field`.
pub(crate) fn cursor(field: &str, value: u64) -> Result<u64, Problem> {
    if value <= crate::api::MAX_POSITION {
        Ok(value)
    } else {
        Err(invalid(
            field,
            format!("must be at most {}", crate::api::MAX_POSITION),
        ))
    }
}

/// Parses an id from a path segment, or 400 naming the segment.
pub(crate) fn path_id<T: std::str::FromStr>(name: &str, raw: &str) -> Result<T, Problem>
where
    T::Err: std::fmt::Display,
{
    raw.parse().map_err(|e: T::Err| invalid(name, e.to_string()))
}

/// Parses a key identifier against the allow-list, or 400 naming `field`.
pub(crate) fn key_identifier(
    field: &str,
    raw: &str,
    hosts: &HostAllowList,
) -> Result<KeyIdentifier, Problem> {
    KeyIdentifier::parse(raw, hosts).map_err(|e| invalid(field, e.to_string()))
}

/// The `If-Match` grammar: `"N"` or `W/"N"`, N being 1 to [`IF_MATCH_MAX_DIGITS`] digits
/// (the ETag of the organization view). `schemas/openapi.json` states it as [`IF_MATCH_PATTERN`].
/// An empty field is an empty list of entity tags (RFC 9110 §5.6.1): no precondition.
pub(crate) fn if_match_version(raw: &str) -> Result<Option<u64>, ()> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let tag = raw.strip_prefix("W/").unwrap_or(raw);
    let digits = tag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .ok_or(())?;
    if digits.is_empty() || digits.len() > IF_MATCH_MAX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(());
    }
    digits.parse().map(Some).map_err(|_| ())
}

/// More digits than any version reaches; 19 always fit a `u64`.
const IF_MATCH_MAX_DIGITS: usize = 19;
/// [`if_match_version`] as an ECMA-262 pattern, for the OpenAPI document.
pub(crate) const IF_MATCH_PATTERN: &str = r#"^((W/)?"[0-9]{1,19}")?$"#;

/// The headers and connection facts a command carries.
#[derive(Debug, Default)]
pub(crate) struct CommandHeaders {
    pub if_match: Option<StreamVersion>,
    pub command_id: Option<CommandId>,
    pub correlation_id: Option<CorrelationId>,
    pub source_ip: Option<String>,
}

impl FromRequestParts<Shared> for CommandHeaders {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &Shared) -> Result<Self, Problem> {
        let if_match = match parts.headers.get(header::IF_MATCH) {
            None => None,
            Some(v) => if_match_version(v.to_str().unwrap_or("?"))
                .map_err(|()| invalid("if-match", "must be a quoted organization version, e.g. \"7\""))?
                .map(StreamVersion),
        };
        let correlation_id = match parts.headers.get("x-correlation-id") {
            None => None,
            Some(v) => Some(path_id("x-correlation-id", v.to_str().unwrap_or_default())?),
        };
        Ok(CommandHeaders {
            if_match,
            command_id: parts.extensions.get::<CommandId>().cloned(),
            correlation_id,
            source_ip: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
        })
    }
}
