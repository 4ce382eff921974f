//! The keyledger HTTP API (CONTRACT.md), on axum. So far: problem+json errors for every
//! application error, bearer-token authentication, and CloudEvents for the stream. Routes, the SSE stream and `run` come
//! with the HTTP issue.

pub mod auth;
pub mod cloudevent;
pub mod problem;

pub use auth::{TokenGrant, Tokens, Unauthenticated};
pub use problem::{FieldError, Problem};
