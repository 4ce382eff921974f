//! `keyledger-client`: what a platform service embeds to use keyledger's data keys
//! (CONTRACT.md "Data keys for platform services", issue 14).
//!
//! So far it holds the [`envelope`] format: data sealed under an organization's DEK with
//! AES-256-GCM (`aws-lc-rs`, ADR 0029), versioned, naming the DEK, and bound to the
//! organization and the caller's context:
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
//! The stream consumer, the key directory and the DEK cache that evicts on revocation are
//! not built yet.

pub mod envelope;

pub use envelope::{DataKey, EnvelopeError};
