//! Runs every data-driven replay scenario in `tests/replay/*.json`.
//!
//! A scenario holds `given` events (as stored, with protected fields `"redacted"`), one `when`
//! command with its actor, and `then`: either the exact events (redacted) or an error code
//! from CONTRACT.md. Key-test results are not in the files: a command that needs them is given
//! evidence that every key test passed, because the domain only ever sees passed tests. Failing
//! key tests belong to the key-access layer's tests.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use keyledger_domain::testing::{self, FIXTURE_SECRET};
use keyledger_domain::*;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    title: String,
    rule: String,
    #[serde(default)]
    seed: Option<String>,
    given: Vec<GivenEvent>,
    when: When,
    then: Then,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GivenEvent {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default = "one")]
    schema_version: u32,
    payload: Value,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct When {
    actor: String,
    command: String,
    #[serde(default)]
    args: Value,
    #[serde(default = "default_at")]
    at: DateTime<Utc>,
}

fn default_at() -> DateTime<Utc> {
    testing::at_minutes(60)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum Then {
    Events(Vec<Value>),
    Error(String),
}

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/replay")
}

fn actor(name: &str) -> Actor {
    match name {
        "org_admin" => testing::admin(),
        "org_admin_of_another_org" => testing::admin_of_other_org(),
        "auditor" => testing::auditor(),
        "support" => testing::support(),
        "platform" => testing::platform(),
        "billing" => testing::billing(),
        "system" => testing::system(),
        other => panic!("unknown actor {other:?} in scenario"),
    }
}

/// Given events come redacted; the state needs open values, so fill in fixture ones.
fn open_fixture(mut event: Event) -> Event {
    event.for_each_protected(|path, slot| {
        let bytes = if *path == keyledger_domain::ProtectedField::ClientSecret {
            FIXTURE_SECRET.as_bytes().to_vec()
        } else {
            vec![0xEE; 256]
        };
        assert!(slot.set_clear(zeroize::Zeroizing::new(bytes)));
    });
    event
}

fn arg<T: serde::de::DeserializeOwned>(args: &Value, field: &str) -> T {
    serde_json::from_value(args[field].clone()).unwrap_or_else(|e| panic!("args.{field}: {e}"))
}

fn connection(args: &Value) -> Connection {
    let c = &args["connection"];
    Connection {
        directory_id: arg(c, "directory_id"),
        application_id: arg(c, "application_id"),
        client_secret: SecretString::from(arg::<String>(c, "client_secret")),
        key_identifier: arg(c, "key_identifier"),
    }
}

fn validated(args: &Value, at: DateTime<Utc>) -> ValidatedKey {
    let properties = match args.get("key") {
        Some(k) => serde_json::from_value(k.clone()).expect("args.key"),
        None => testing::properties(),
    };
    ValidatedKey::attest(connection(args), properties, at).expect("scenario keys carry a version")
}

fn customer(key: &KeyIdentifier) -> WrappedBy {
    WrappedBy::Customer {
        key_identifier: key.clone(),
    }
}

fn command_kind(state: &State, name: &str, args: &Value, at: DateTime<Utc>) -> testing::Scripted {
    match name {
        "RegisterOrganization" => testing::Scripted::RegisterOrganization {
            name: arg(args, "name"),
            plan: arg(args, "plan"),
            tenants: arg(args, "tenants"),
            initial_dek: testing::provider_dek(),
        },
        "AddTenant" => testing::Scripted::AddTenant {
            tenant: serde_json::from_value(args.clone()).expect("args"),
        },
        "RemoveTenant" => testing::Scripted::RemoveTenant {
            tenant_id: arg(args, "tenant_id"),
        },
        "ChangePlan" => testing::Scripted::ChangePlan {
            plan: arg(args, "plan"),
            reason: arg(args, "reason"),
        },
        "EnableCustomerManagedKey" => {
            let key = validated(args, at);
            let dek = testing::customer_dek(key.key());
            testing::Scripted::EnableCustomerManagedKey { key, dek }
        }
        "EditConnection" => {
            let key = validated(args, at);
            let current = state
                .org()
                .and_then(|o| o.customer_key())
                .map(|k| k.key().clone());
            let rotation = match current {
                Some(c) if !c.same_key_version(key.key()) => {
                    Some(testing::rewrap_all(state, &customer(key.key())))
                }
                _ => None,
            };
            testing::Scripted::EditConnection { key, rotation }
        }
        "RotateKey" => {
            let key = validated(args, at);
            let evidence = match state.org().and_then(|o| o.customer_key()) {
                Some(_) => testing::rewrap_all(state, &customer(key.key())),
                None => RewrapEvidence {
                    unwrapped: UnwrapProof::attest(key.key().clone(), Default::default()),
                    rewrapped: vec![],
                },
            };
            testing::Scripted::RotateKey { key, evidence }
        }
        "SwitchToProviderManagedKey" => {
            let abandon: bool = args
                .get("abandon_lost_data")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let has_cmk = state.org().and_then(|o| o.customer_key()).is_some();
            let evidence = (has_cmk && !abandon).then(|| {
                testing::rewrap_all(
                    state,
                    &WrappedBy::Provider {
                        internal_key_id: "ik-1".into(),
                    },
                )
            });
            testing::Scripted::SwitchToProviderManagedKey {
                evidence,
                new_dek: testing::provider_dek(),
                abandon_lost_data: abandon,
            }
        }
        "DeclareDataLost" => testing::Scripted::DeclareDataLost {
            reason: arg(args, "reason"),
            ticket: args.get("ticket").and_then(Value::as_str).map(str::to_owned),
        },
        "RecordKeyHealth" => testing::Scripted::RecordKeyHealth {
            status: arg(args, "status"),
            detail: args.get("detail").and_then(Value::as_str).map(str::to_owned),
        },
        "RecordKeyDeleted" => testing::Scripted::RecordKeyDeleted {
            recoverable_until: arg(args, "recoverable_until"),
            detail: args.get("detail").and_then(Value::as_str).map(str::to_owned),
        },
        other => panic!("unknown command {other:?} in scenario"),
    }
}

fn schema_check(event_type: &str, payload: &Value) -> Result<(), String> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../schemas/events/{event_type}.v1.json"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let validator = jsonschema::validator_for(&schema).map_err(|e| e.to_string())?;
    let errors: Vec<String> = validator.iter_errors(payload).map(|e| e.to_string()).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{event_type}: {errors:?}"))
    }
}

fn run(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let scenario: Scenario = serde_json::from_str(&text).map_err(|e| format!("unreadable scenario: {e}"))?;
    if !scenario.rule.starts_with('R') || scenario.title.trim().is_empty() {
        return Err("every scenario names its rule (R1–R13) and has a title".into());
    }
    let _ = scenario.seed;
    let mut state = State::default();
    for g in scenario.given {
        let event = Event::decode(&g.event_type, g.schema_version, g.payload)
            .map_err(|e| format!("given event does not decode: {e}"))?;
        state = evolve(state, &open_fixture(event));
    }
    let command = testing::ScriptedCommand {
        org_id: testing::org_id(),
        actor: actor(&scenario.when.actor),
        at: scenario.when.at,
        kind: command_kind(
            &state,
            &scenario.when.command,
            &scenario.when.args,
            scenario.when.at,
        ),
    };
    let result = testing::decide_scripted(&state, command);
    match (scenario.then, result) {
        (Then::Events(expected), Ok(events)) => {
            let got: Vec<Value> = events.iter().map(testing::render).collect();
            for e in &expected {
                schema_check(e["type"].as_str().unwrap_or("?"), &e["payload"])?;
            }
            if got != expected {
                return Err(format!(
                    "events differ\n  expected: {}\n  got:      {}",
                    serde_json::to_string_pretty(&expected).unwrap_or_default(),
                    serde_json::to_string_pretty(&got).unwrap_or_default()
                ));
            }
            Ok(())
        }
        (Then::Error(code), Err(e)) if e.code() == code => Ok(()),
        (Then::Error(code), Err(e)) => Err(format!("expected error {code}, got {} ({e})", e.code())),
        (Then::Error(code), Ok(events)) => Err(format!(
            "expected error {code}, got events {:?}",
            events.iter().map(Event::event_type).collect::<Vec<_>>()
        )),
        (Then::Events(_), Err(e)) => Err(format!("expected events, got error {} ({e})", e.code())),
    }
}

#[test]
fn every_replay_scenario_passes() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(scenario_dir())
        .expect("tests/replay exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 25,
        "expected at least 25 scenarios, found {}",
        paths.len()
    );
    let failures: Vec<String> = paths
        .iter()
        .filter_map(|p| {
            run(p)
                .err()
                .map(|e| format!("{}: {e}", p.file_name().unwrap_or_default().to_string_lossy()))
        })
        .collect();
    println!("{} replay scenarios run", paths.len());
    assert!(
        failures.is_empty(),
        "{} scenario(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn the_runner_detects_a_wrong_expectation() {
    // Guard against a runner that passes everything: flip one scenario's expectation.
    let dir = scenario_dir();
    let text =
        std::fs::read_to_string(dir.join("r08-downgrade-locks-the-customer-managed-key.json")).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["then"] = serde_json::json!({ "error": "cmk_locked_by_plan" });
    let tmp = std::env::temp_dir().join(format!("keyledger-replay-{}.json", std::process::id()));
    std::fs::write(&tmp, v.to_string()).unwrap();
    let result = run(&tmp);
    std::fs::remove_file(&tmp).ok();
    assert!(result.is_err());
}
