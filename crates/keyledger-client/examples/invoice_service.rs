//! A small platform service that keeps invoices sealed under each organization's data key.
//!
//! ```sh
//! # against `keyledger serve` in dev mode (stderr shows the platform token)
//! KEYLEDGER_URL=http://127.0.0.1:8080 KEYLEDGER_TOKEN=dev-platform-… ORG_ID=0193… \
//!   cargo run -p keyledger-client --example invoice_service
//! ```
//!
//! Configuration (environment):
//! - `KEYLEDGER_URL`: keyledger's base URL;
//! - `KEYLEDGER_TOKEN`: a bearer token of role `platform` (never printed);
//! - `KEYLEDGER_CA_CERT`: a PEM file with the root CA of keyledger's certificate, when it is
//!   private (optional);
//! - `KEYLEDGER_POSITION_FILE`: where the stream checkpoint lives (default
//!   `invoice-service.position.json`);
//! - `ORG_ID`: the organization whose invoices this demo seals;
//! - `ROUNDS`: how many seal/open rounds, 5 s apart (default 3; 0 runs until Ctrl-C).

use std::time::Duration;

use keyledger_client::{Client, ClientError};
use keyledger_domain::OrgId;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .init();

    let url = std::env::var("KEYLEDGER_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let token = std::env::var("KEYLEDGER_TOKEN").map_err(|_| "set KEYLEDGER_TOKEN (role platform)")?;
    let org: OrgId = std::env::var("ORG_ID")
        .map_err(|_| "set ORG_ID")?
        .parse()
        .map_err(|e| format!("ORG_ID: {e}"))?;
    let position_file =
        std::env::var("KEYLEDGER_POSITION_FILE").unwrap_or_else(|_| "invoice-service.position.json".into());
    let rounds: u32 = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);

    // 1. Configure the client.
    let mut builder = Client::builder(url, token)
        .position_file(position_file)
        .max_cached_keys(10_000);
    if let Ok(ca) = std::env::var("KEYLEDGER_CA_CERT") {
        builder = builder.ca_cert_pem(std::fs::read(ca)?);
    }
    let client = builder.build()?;

    // 2. Follow the event stream in the background; report evictions as they happen.
    let _consumer = client.spawn_consumer();
    let mut changes = client.subscribe();
    tokio::spawn(async move {
        while let Ok(change) = changes.recv().await {
            if let Some(reason) = change.eviction {
                println!(
                    "position {}: organization {} evicted ({reason:?}, {} keys)",
                    change.position, change.org, change.evicted_keys
                );
            }
        }
    });

    // 3. Seal and open invoices.
    let mut round = 0;
    loop {
        round += 1;
        let context = format!("invoices/{round}");
        let invoice = format!("invoice {round}: 42.00 EUR, card 4111…1111");
        match client.encrypt(org, invoice.as_bytes(), context.as_bytes()).await {
            Ok(sealed) => {
                let opened = client.decrypt(org, &sealed, context.as_bytes()).await?;
                println!(
                    "round {round}: sealed {} bytes under DEK {}, opened {} bytes",
                    sealed.len(),
                    keyledger_client::envelope::dek_of(&sealed)?,
                    opened.len()
                );
            }
            // What a service does with each refusal.
            Err(ClientError::KeyRevoked { status, .. }) => {
                println!("round {round}: the customer's key is revoked ({status}); not retrying")
            }
            Err(ClientError::DataLost { .. }) => println!("round {round}: the data key was declared lost"),
            Err(ClientError::Unavailable { retry_after }) => {
                println!("round {round}: keyledger or the vault is unavailable; retry after {retry_after:?}")
            }
            Err(e) => println!("round {round}: {e}"),
        }
        println!(
            "  stream position {}, {} keys cached, {} releases, {} evictions",
            client.position(),
            client.cached_keys(),
            client.releases(),
            client.evictions()
        );
        if rounds != 0 && round >= rounds {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
