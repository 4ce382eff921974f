//! `keyledger-client`: what a platform service embeds to use keyledger's data keys
//! (CONTRACT.md "Data keys for platform services", issue 14).
//!
//! A [`Client`] seals and opens application data under an organization's data keys (DEKs).
//! It keeps a **key directory** of every organization (mode, active DEK, key, lock, health,
//! data loss), folded from keyledger's event stream by a **stream consumer**, and a
//! **DEK cache** of the keys keyledger released to it, which it evicts as soon as the
//! directory sees the organization's key revoked, switched, rotated, locked or declared lost.
//!
//! # Use
//!
//! ```no_run
//! use keyledger_client::{Client, ClientError};
//! use keyledger_domain::OrgId;
//!
//! # async fn demo(org: OrgId) -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::builder("https://keyledger.internal:8443", "platform-token")
//!     .ca_cert_pem(std::fs::read("/etc/keyledger/ca.pem")?) // a private CA, if any
//!     .position_file("/var/lib/invoices/keyledger.position.json")
//!     .build()?;
//! // Follow the event stream in the background (dropping the handle stops it).
//! let _consumer = client.spawn_consumer();
//!
//! let sealed = client.encrypt(org, b"card 4111", b"invoices/42").await?;
//! let opened = client.decrypt(org, &sealed, b"invoices/42").await?;
//! assert_eq!(&opened[..], b"card 4111");
//!
//! match client.decrypt(org, &sealed, b"invoices/42").await {
//!     Err(ClientError::KeyRevoked { .. }) => { /* the customer revoked their key */ }
//!     Err(ClientError::Unavailable { retry_after }) => { /* retry later */ }
//!     _ => {}
//! }
//! # Ok(()) }
//! ```
//!
//! The token must have the role `platform`. The client needs no other configuration;
//! [`ClientBuilder`] tunes the cache bound, the backoff and the timeouts. The example
//! `examples/invoice_service.rs` is a whole service
//! (`cargo run -p keyledger-client --example invoice_service`).
//!
//! Tests and processes that run several clients give each a [`MemoryPositionStore`] (or a
//! file of its own): the default file is one per working directory.
//!
//! # Ciphertext format
//!
//! [`Client::encrypt`] returns a version-1 [`envelope`]: `0x01`, the DEK id (4 bytes,
//! big-endian), a random 12-byte nonce, the AES-256-GCM ciphertext and its 16-byte tag.
//! The organization id and the caller's `context` are authenticated but not stored: pass the
//! same context to [`Client::decrypt`] (a table and row, a file name). An envelope does not
//! open for another organization or context, and a changed byte fails it
//! ([`ClientError::Envelope`]). Data sealed under an old DEK keeps opening after a rotation:
//! the envelope names its DEK and `decrypt` releases that one.
//!
//! ```
//! use keyledger_client::envelope::{self, DataKey};
//! use keyledger_domain::{DekId, OrgId};
//!
//! let org = OrgId::new_v7();
//! // In a service, the key comes from `POST …/data-keys/active/release`.
//! let key = DataKey::new(DekId(3), &[7; 32]).unwrap();
//! let sealed = envelope::seal(org, &key, b"card 4111", b"invoices/42").unwrap();
//! assert_eq!(envelope::dek_of(&sealed).unwrap(), DekId(3));
//! let opened = envelope::open(org, &key, &sealed, b"invoices/42").unwrap();
//! assert_eq!(&opened[..], b"card 4111");
//! // Another row's context does not open it.
//! assert!(envelope::open(org, &key, &sealed, b"invoices/43").is_err());
//! ```
//!
//! # Releases and the cache
//!
//! On a miss the client calls `POST /v1/organizations/{org}/data-keys/{dek_id}/release`
//! (or `…/active/release` when the directory does not know the organization's active DEK
//! yet; the answer's `dek_id` is then used and remembered). Concurrent misses for one key
//! make one call. A released key is cached for the answer's `cache_ttl_seconds` (capped by
//! [`ClientBuilder::max_cache_ttl`]), at most [`ClientConfig::max_cached_keys`] keys in all,
//! least recently used first out. Keys are wiped when they drop and never printed; no error
//! or log line carries a key, a plaintext or the token.
//!
//! # Eviction rules
//!
//! The directory evicts every cached DEK of an organization when it folds:
//!
//! | event | why |
//! |---|---|
//! | `KeyHealthChanged` into the revoked class ([`keyledger_domain::HealthStatus::is_revoked`]: `key_disabled`, `key_not_found`, `permission_denied`, `credentials_invalid`, `credentials_expired`) | the customer refused keyledger their key |
//! | `SwitchedToProviderManagedKey` | the customer key no longer wraps the DEKs |
//! | `CustomerManagedKeyEnabled` | a new key wraps the organization's DEKs |
//! | `CustomerManagedKeyRotated`, and a `CustomerManagedKeyConnectionEdited` that changes the key identifier | the DEKs moved under another key |
//! | `CustomerManagedKeyLocked` | the plan was downgraded |
//! | `CustomerDataDeclaredLost` | the DEKs are gone for good |
//! | a known key event whose payload cannot be read | to be safe |
//!
//! While an organization's customer key is in the revoked class, `encrypt` and `decrypt`
//! fail fast with [`ClientError::KeyRevoked`] and make **no** release call, until a
//! `KeyHealthChanged` out of the revoked class (or a rotation or a switch to the
//! provider-managed key, which leave it). A DEK declared lost fails with
//! [`ClientError::DataLost`] without a call. A release that was in flight when its
//! organization was evicted is used for that one call only if the directory still allows it,
//! and is not cached.
//!
//! Other events (`PlanChanged`, tenants, `DataKeyReleased`, any type this build does not
//! know) and the audit checkpoints of `keyledger/audit` change nothing.
//! [`Client::subscribe`] reports each directory change with its eviction;
//! [`Client::evictions`] counts them.
//!
//! # The stream consumer
//!
//! [`Client::spawn_consumer`] (or [`Client::run_consumer`]) follows
//! `GET /v1/events/stream` and folds each CloudEvent in order. When the stream ends or
//! fails, or stays silent past [`ClientConfig::idle_timeout`] (keyledger sends a heartbeat
//! every 15 s), it reconnects with `Last-Event-ID: <last position applied>`, after a capped
//! exponential backoff with jitter (a server `Retry-After` is honoured). [`Client::caught_up`]
//! waits until a position is applied.
//!
//! The consumer saves a [`Checkpoint`] (the position *and* the directory folded up to it)
//! in a [`PositionStore`] whenever the stream pauses: a [`FilePositionStore`] by default
//! (replaced atomically), or a [`MemoryPositionStore`]. A restarted client resumes both, so
//! it never holds a position past events it did not fold. The cache is never stored.

mod cache;
mod client;
mod consumer;
pub mod directory;
pub mod envelope;
mod error;
pub mod position;

pub use client::{Client, ClientBuilder, ClientConfig, DEFAULT_POSITION_FILE, DirectoryChange};
pub use consumer::ConsumerHandle;
pub use directory::{Eviction, KeyDirectory, Mode, OrgKeys};
pub use envelope::{DataKey, EnvelopeError};
pub use error::{BuildError, ClientError};
pub use position::{Checkpoint, FilePositionStore, MemoryPositionStore, PositionStore};
