//! `key-bench [--iterations N] [--key-size BITS]`: runs the R4 connection test (read, checks,
//! wrap, unwrap) N times in sequence, first against the simulated vault in process (the
//! official SDK over `InProcessTransport`), then against the HTTPS emulator (the same SDK over
//! reqwest + rustls on a loopback socket, emulator served from this process), and prints the
//! round trips per second of each and their ratio.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

use keyledger_azure::{AzureConfig, AzureKeyAccess, InProcessTransport};
use keyledger_domain::{Connection, HostAllowList, KeyIdentifier};
use keyledger_keys::{KeyAccess, RetryPolicy, test_connection};
use keyledger_vault_sim::{AppRegistration, Clock, NewKey, Vault, VaultConfig};
use secrecy::SecretString;

const CLIENT: &str = "be4c0000-0000-4000-8000-00000000b001";
const SECRET: &str = "bench-secret";
const WARM_UP: usize = 5;

fn setup(vault: &Vault, base: &str, bits: u32) -> Result<(), String> {
    let tenant = vault.config().tenant_id.clone();
    vault.register_app(AppRegistration::new(
        &tenant,
        CLIENT,
        SECRET,
        &["get", "wrapKey", "unwrapKey"],
    ));
    vault
        .create_key(base, NewKey::rsa("bench", bits))
        .map(|_| ())
        .map_err(|e| e.message)
}

fn connection(vault: &Vault, base: &str, allow: &HostAllowList) -> Result<Connection, String> {
    let tenant = &vault.config().tenant_id;
    Ok(Connection {
        directory_id: tenant.parse().map_err(|_| "tenant id")?,
        application_id: CLIENT.parse().map_err(|_| "client id")?,
        client_secret: SecretString::from(SECRET),
        key_identifier: KeyIdentifier::parse(&format!("{base}/keys/bench"), allow)
            .map_err(|e| e.to_string())?,
    })
}

/// Runs `n` connection tests after a warm-up; returns round trips per second.
async fn measure<K: KeyAccess>(
    access: &K,
    connection: &Connection,
    n: u32,
) -> Result<(f64, Duration), String> {
    for _ in 0..WARM_UP {
        test_connection(access, connection, chrono::Utc::now())
            .await
            .outcome
            .map_err(|e| e.to_string())?;
    }
    let started = Instant::now();
    for _ in 0..n {
        test_connection(access, connection, chrono::Utc::now())
            .await
            .outcome
            .map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed();
    Ok((f64::from(n) / elapsed.as_secs_f64(), elapsed))
}

async fn run(n: u32, bits: u32) -> Result<(), String> {
    let policy = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };

    // In process: no sockets, no TLS.
    let base = "https://bench.vault.azure.net";
    let vault = Vault::new(VaultConfig::default(), Clock::system());
    setup(&vault, base, bits)?;
    let access = AzureKeyAccess::with_transport(
        AzureConfig::default(),
        InProcessTransport::transport(vault.clone()),
    )
    .retrying(policy.clone());
    let c = connection(&vault, base, &HostAllowList::azure_public_clouds())?;
    let (in_process, t1) = measure(&access, &c, n).await?;

    // The HTTPS emulator on a loopback socket.
    let dir = std::env::temp_dir().join(format!("key-bench-{}", std::process::id()));
    let emulator = akv_emulator::start(([127, 0, 0, 1], 0).into(), &dir)
        .await
        .map_err(|e| e.to_string())?;
    setup(&emulator.vault, &emulator.vault_url, bits)?;
    let ca = std::fs::read(&emulator.ca_cert).map_err(|e| e.to_string())?;
    // With the emulator's port: an entry without one allows only port 443.
    let allow = HostAllowList::new([format!("127.0.0.1:{}", emulator.addr.port())]);
    let config = AzureConfig {
        authority_host: emulator.authority_host.clone(),
        allowed_vault_hosts: allow.clone(),
        ca_cert_pem: Some(ca),
        request_timeout: Duration::from_secs(10),
        verify_challenge_resource: true,
    };
    let access = AzureKeyAccess::new(config)
        .map_err(|e| e.to_string())?
        .retrying(policy);
    let c = connection(&emulator.vault, &emulator.vault_url, &allow)?;
    let (https, t2) = measure(&access, &c, n).await?;
    emulator.shutdown().await.map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(PathBuf::from(&dir));

    println!("test_connection round trips (read + checks + wrap + unwrap), RSA-{bits}, {n} iterations each:");
    println!(
        "  in-process simulated vault: {in_process:>8.1}/s  ({:.2} s)",
        t1.as_secs_f64()
    );
    println!(
        "  HTTPS emulator (loopback):  {https:>8.1}/s  ({:.2} s)",
        t2.as_secs_f64()
    );
    println!("  ratio in-process / HTTPS:   {:>8.2}", in_process / https);
    Ok(())
}

/// Connection tests per second: the in-process simulated vault against the HTTPS emulator.
#[derive(Debug, Parser)]
#[command(name = "key-bench")]
struct Args {
    /// Connection tests per vault, after a warm-up of five.
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..))]
    iterations: u32,
    /// RSA modulus size of the test key: 2048, 3072 or 4096.
    #[arg(long, value_name = "BITS", default_value_t = 2048)]
    key_size: u32,
}

fn main() -> ExitCode {
    let Args {
        iterations: n,
        key_size: bits,
    } = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("key-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(n, bits)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("key-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
