//! The OpenAPI document (placeholder, filled in below).
