//! Captures every tracing event (TRACE level, the SDK's included) of full connection tests,
//! wraps and unwraps, and failures, and checks that neither the client secret nor a DEK
//! appears in them, nor in Debug output of the values involved.

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use keyledger_azure::{AzureConfig, AzureKeyAccess, InProcessTransport};
use keyledger_domain::{Connection, HostAllowList, KeyIdentifier};
use keyledger_keys::{Dek, KeyAccess, RetryPolicy, test_connection};
use keyledger_vault_sim::{AppRegistration, Clock, NewKey, Vault, VaultConfig};
use secrecy::SecretString;

const SECRET: &str = "Sup3r-S3cret~ClientValue.42";
const CLIENT: &str = "0b6f5d4e-1111-4222-8333-444455556666";

/// Passes calls through and keeps a copy of every DEK that goes in or out, so the DEK made
/// inside `test_connection` can be searched for too.
struct SeeDeks<K> {
    inner: K,
    seen: Mutex<Vec<Vec<u8>>>,
}

#[async_trait::async_trait]
impl<K: KeyAccess> KeyAccess for SeeDeks<K> {
    async fn describe(
        &self,
        c: &Connection,
    ) -> Result<keyledger_keys::KeyDescription, keyledger_keys::KeyAccessError> {
        self.inner.describe(c).await
    }
    async fn wrap(
        &self,
        c: &Connection,
        dek: &Dek,
    ) -> Result<keyledger_domain::WrappedDek, keyledger_keys::KeyAccessError> {
        self.seen.lock().unwrap().push(dek.expose().to_vec());
        self.inner.wrap(c, dek).await
    }
    async fn unwrap(
        &self,
        c: &Connection,
        edek: &keyledger_domain::Edek,
    ) -> Result<Dek, keyledger_keys::KeyAccessError> {
        let dek = self.inner.unwrap(c, edek).await?;
        self.seen.lock().unwrap().push(dek.expose().to_vec());
        Ok(dek)
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

fn forms(bytes: &[u8]) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    vec![
        bytes.iter().map(|b| format!("{b:02x}")).collect(),
        URL_SAFE_NO_PAD.encode(bytes),
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        format!("{bytes:?}"),
    ]
}

#[tokio::test(flavor = "current_thread")]
async fn neither_the_client_secret_nor_a_dek_reaches_the_logs() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let vault = Vault::new(VaultConfig::default(), Clock::system());
    let tenant = vault.config().tenant_id.clone();
    vault.register_app(AppRegistration::new(
        &tenant,
        CLIENT,
        SECRET,
        &["get", "wrapKey", "unwrapKey"],
    ));
    vault
        .create_key("https://contoso.vault.azure.net", NewKey::rsa("cmk", 2048))
        .unwrap();
    let access = SeeDeks {
        inner: AzureKeyAccess::with_transport(
            AzureConfig::default(),
            InProcessTransport::transport(vault.clone()),
        )
        .retrying(RetryPolicy::default()),
        seen: Mutex::default(),
    };
    let connection = Connection {
        directory_id: tenant.parse().unwrap(),
        application_id: CLIENT.parse().unwrap(),
        client_secret: SecretString::from(SECRET),
        key_identifier: KeyIdentifier::parse(
            "https://contoso.vault.azure.net/keys/cmk",
            &HostAllowList::azure_public_clouds(),
        )
        .unwrap(),
    };

    // A full connection test, then a wrap and unwrap of a DEK we know.
    let t = test_connection(&access, &connection, vault.clock().now()).await;
    let key = t.outcome.as_ref().expect("passes");
    let dek = Dek::generate();
    let wrapped = access.wrap(key.connection(), &dek).await.unwrap();
    let back = access.unwrap(key.connection(), wrapped.edek()).await.unwrap();
    assert_eq!(back, dek);
    // A failure path: a wrong secret (its error, with its detail, is logged by the port).
    let wrong = Connection {
        client_secret: SecretString::from(format!("{SECRET}-wrong")),
        ..connection.clone()
    };
    let failed = test_connection(&access, &wrong, vault.clock().now()).await;
    assert!(failed.outcome.is_err());

    let mut text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    // The capture saw keyledger's events and the SDK's request logging (token and wrap calls).
    for expected in [
        "key connection test passed",
        "oauth2/v2.0/token",
        "/wrapkey",
        "/unwrapkey",
    ] {
        assert!(text.contains(expected), "no {expected:?} in the capture:\n{text}");
    }
    // Debug output of everything a caller might log.
    text.push_str(&format!(
        "{t:?}\n{failed:?}\n{connection:?}\n{:?}\n{dek:?}\n{back:?}\n{wrapped:?}\n{vault:?}",
        access.inner
    ));

    assert!(!text.contains(SECRET), "client secret leaked");
    let seen = access.seen.lock().unwrap().clone();
    // test_connection's own round trip (in and out), then ours (in and out).
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[2], dek.expose());
    for secret_dek in &seen {
        for form in forms(secret_dek) {
            assert!(!text.contains(&form), "DEK leaked as {form}");
        }
    }
}
