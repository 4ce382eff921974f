//! The customer's Azure Key Vault connection (R4, R6, R13).

use schemars::JsonSchema;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::ids::{ApplicationId, DirectoryId};
use crate::key_identifier::KeyIdentifier;
use crate::secret::Protected;

/// The four things "Test and save" needs. The client secret is write-only: it is never
/// serialized in clear and never shown.
#[derive(Clone, Debug)]
pub struct Connection {
    pub directory_id: DirectoryId,
    pub application_id: ApplicationId,
    pub client_secret: SecretString,
    pub key_identifier: KeyIdentifier,
}

impl Connection {
    /// The fields that differ from `other`. The secret is compared by value but never shown.
    pub fn changed_fields(&self, other: &Connection) -> Vec<ConnectionField> {
        let mut out = Vec::new();
        if self.directory_id != other.directory_id {
            out.push(ConnectionField::DirectoryId);
        }
        if self.application_id != other.application_id {
            out.push(ConnectionField::ApplicationId);
        }
        if self.client_secret.expose_secret() != other.client_secret.expose_secret() {
            out.push(ConnectionField::ClientSecret);
        }
        if self.key_identifier.to_string() != other.key_identifier.to_string() {
            out.push(ConnectionField::KeyIdentifier);
        }
        out
    }
}

/// A field of a connection, as named in `changed_fields`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionField {
    DirectoryId,
    ApplicationId,
    ClientSecret,
    KeyIdentifier,
}

/// A connection as recorded in an event: the secret is a protected (sealed) field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionRecord {
    pub directory_id: DirectoryId,
    pub application_id: ApplicationId,
    pub client_secret: Protected<SecretString>,
    pub key_identifier: KeyIdentifier,
}

impl From<&Connection> for ConnectionRecord {
    fn from(c: &Connection) -> Self {
        Self {
            directory_id: c.directory_id,
            application_id: c.application_id,
            client_secret: Protected::Open(c.client_secret.clone()),
            key_identifier: c.key_identifier.clone(),
        }
    }
}

impl ConnectionRecord {
    /// The usable connection, when the secret is open (it is after the store opened it).
    pub fn to_connection(&self) -> Option<Connection> {
        Some(Connection {
            directory_id: self.directory_id,
            application_id: self.application_id,
            client_secret: self.client_secret.open()?.clone(),
            key_identifier: self.key_identifier.clone(),
        })
    }
}
