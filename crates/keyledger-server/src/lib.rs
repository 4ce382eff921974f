//! The keyledger HTTP API (CONTRACT.md), on axum. So far: problem+json errors for every
//! application error, and bearer-token authentication. Routes, the SSE stream and `run` come
//! with the HTTP issue.

pub mod auth;
pub mod problem;

pub use auth::{TokenGrant, Tokens, Unauthenticated};
pub use problem::{FieldError, Problem};
