//! A simulated Azure Key Vault (keys) with an Entra ID token endpoint, for dev mode and tests.
//!
//! [`Vault`] models the Key Vault behaviour keyledger relies on: RSA keys (2048/3072/4096) with
//! versions, attributes (`enabled`, `exp`, `nbf`, `key_ops`, tags), real RSA-OAEP-256 wrap,
//! unwrap, encrypt and decrypt, soft delete with retention, recover, purge, backup and restore,
//! app registrations with key permissions and secret expiry, fault injection, a controllable
//! [`Clock`], and state snapshots. EC P-256 keys exist for create/get/update only (the recorded
//! SDK sessions use one); they refuse cryptographic operations.
//! [`http::router`] serves it as the Key Vault REST API (with the 401 challenge flow) and the
//! token endpoint, which also issues RS256 keyledger access tokens (`scope=api://keyledger/.default`)
//! and serves their JWKS; [`http::control_router`] serves the emulator's control API.

pub mod clock;
pub mod http;
pub mod model;

pub use clock::Clock;
pub use http::{control_router, router, router_with_control};
pub use model::{
    AkvError, AppClaims, AppPatch, AppRegistration, CryptoOp, DEFAULT_RSA_KEY_OPS, DemoConnection,
    EntraError, Faults, KEY_PERMISSIONS, KEYLEDGER_AUDIENCE, KEYLEDGER_SCOPE, KeyPatch, NewKey, Vault,
    VaultConfig,
};
