//! The verifiable audit log over real sockets, on SQLite and PostgreSQL: checkpoints, proofs
//! and bundles checked with implementations keyledger did not write (`signed_note` for the
//! signature, `ct-merkle` for the proofs), besides keyledger's own offline verifier.

#[macro_use]
mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
use keyledger_audit::{Bundle, Verifier, verify_bundle};
use serde_json::json;
use sha2::{Digest, Sha256};
use signed_note::{Note, StandardVerifier, VerifierList};

on_every_backend!(
    checkpoints_proofs_and_bundles_verify_with_independent_implementations,
    bad_proof_queries_are_400_and_readers_are_held_to_their_scope,
);

fn org_path(org: &str, rest: &str) -> String {
    format!("/v1/organizations/{org}{rest}")
}

/// A checkpoint note's body: origin, size, root.
struct Body {
    origin: String,
    size: u64,
    root: [u8; 32],
}

fn body(note: &str) -> Body {
    let mut lines = note.lines();
    let origin = lines.next().unwrap().to_owned();
    let size = lines.next().unwrap().parse().unwrap();
    let root = B64.decode(lines.next().unwrap()).unwrap().try_into().unwrap();
    Body { origin, size, root }
}

/// The organization's latest checkpoint, once it covers `version` events (the audit tree
/// follows the log).
async fn checkpoint_at(s: &Server, org: &str, version: u64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = s
            .call("GET", &org_path(org, "/audit/checkpoint"), AUDITOR, None)
            .await;
        if reply.status == 200 && body(&reply.text).size >= version {
            assert_eq!(reply.header("content-type"), Some("text/plain; charset=utf-8"));
            return reply.text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint of {version} events: {} {}",
            reply.status,
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn version_of(s: &Server, org: &str) -> u64 {
    s.call("GET", &org_path(org, ""), AUDITOR, None)
        .await
        .expect(200)
        .json()["version"]
        .as_u64()
        .unwrap()
}

fn hashes(proof: &serde_json::Value) -> Vec<u8> {
    proof["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|h| B64.decode(h.as_str().unwrap()).unwrap())
        .collect()
}

async fn checkpoints_proofs_and_bundles_verify_with_independent_implementations(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    s.call(
        "POST",
        &org_path(&org, "/customer-managed-key"),
        ADMIN,
        Some(s.connection(0)),
    )
    .await
    .expect(201);
    let v1 = version_of(s, &org).await;

    // The public key needs no token; signed_note takes it as a standard verifier key.
    let key = s
        .send("GET", "/v1/audit/public-key", None, None, &[])
        .await
        .expect(200)
        .json();
    assert_eq!(key["algorithm"], "ed25519");
    let vkey = key["verifier_key"].as_str().unwrap().to_owned();
    assert!(vkey.starts_with(&format!("{AUDIT_ORIGIN}+")), "{vkey}");
    let theirs = VerifierList::new(vec![Box::new(StandardVerifier::new(&vkey).unwrap())]);

    let note1 = checkpoint_at(s, &org, v1).await;
    let (verified, _) = Note::from_bytes(note1.as_bytes())
        .unwrap()
        .verify(&theirs)
        .unwrap();
    assert_eq!(verified.len(), 1);
    let cp1 = body(&note1);
    assert_eq!(cp1.origin, format!("{AUDIT_ORIGIN}/org/{org}"));
    assert_eq!(cp1.size, v1);
    // Asking again without growth signs nothing new.
    let again = s
        .call("GET", &org_path(&org, "/audit/checkpoint"), SUPPORT, None)
        .await
        .expect(200);
    assert_eq!(again.text, note1);

    // The bundle verifies offline with keyledger's verifier, and each leaf's proof with ct-merkle.
    let bundle_text = s
        .call("GET", &org_path(&org, "/audit/bundle"), AUDITOR, None)
        .await
        .expect(200)
        .text;
    let bundle: Bundle = serde_json::from_str(&bundle_text).unwrap();
    let ours = Verifier::parse(&vkey).unwrap();
    let checked = verify_bundle(&bundle, &ours, None).unwrap();
    assert_eq!(checked.checkpoint.size(), v1);
    let root1 = RootHash::<Sha256>::new(cp1.root.into(), cp1.size);
    for entry in &bundle.entries {
        let input = B64.decode(&entry.leaf_input).unwrap();
        let proof = s
            .call(
                "GET",
                &org_path(&org, &format!("/audit/proof?version={}", entry.version.0)),
                ADMIN,
                None,
            )
            .await
            .expect(200)
            .json();
        assert_eq!(proof["leaf_index"], entry.version.0 - 1);
        assert_eq!(proof["tree_size"], v1);
        let leaf_hash = Sha256::new().chain_update([0u8]).chain_update(&input).finalize();
        assert_eq!(proof["leaf_hash"], B64.encode(leaf_hash));
        root1
            .verify_inclusion(
                &input,
                entry.version.0 - 1,
                &InclusionProof::from_bytes(hashes(&proof)),
            )
            .unwrap();
    }

    // The log grows; the new checkpoint extends the old one (consistency, checked by ct-merkle).
    for tier in ["premium", "standard"] {
        s.call(
            "PUT",
            &org_path(&org, "/plan"),
            BILLING,
            Some(json!({"plan": {"kind": "enterprise", "tier": tier}, "reason": "test"})),
        )
        .await
        .expect(200);
    }
    let v2 = version_of(s, &org).await;
    let note2 = checkpoint_at(s, &org, v2).await;
    let cp2 = body(&note2);
    assert_eq!(cp2.size, v2);
    let proof = s
        .call(
            "GET",
            &org_path(&org, &format!("/audit/consistency?from={v1}&to={v2}")),
            AUDITOR,
            None,
        )
        .await
        .expect(200)
        .json();
    assert_eq!(
        (proof["from"].as_u64(), proof["to"].as_u64()),
        (Some(v1), Some(v2))
    );
    let root2 = RootHash::<Sha256>::new(cp2.root.into(), cp2.size);
    let parsed = ConsistencyProof::<Sha256>::try_from_bytes(hashes(&proof)).unwrap();
    root2.verify_consistency(&root1, &parsed).unwrap();
    // An old leaf proven against the old checkpoint's size still verifies there.
    let old = s
        .call(
            "GET",
            &org_path(&org, &format!("/audit/proof?version=1&tree_size={v1}")),
            AUDITOR,
            None,
        )
        .await
        .expect(200)
        .json();
    let first_input = B64.decode(&bundle.entries[0].leaf_input).unwrap();
    root1
        .verify_inclusion(&first_input, 0, &InclusionProof::from_bytes(hashes(&old)))
        .unwrap();

    // The global log: platform and auditors of every organization read its checkpoint.
    for token in [PLATFORM, AUDITOR] {
        let global = s
            .call("GET", "/v1/audit/checkpoint", token, None)
            .await
            .expect(200);
        Note::from_bytes(global.text.as_bytes())
            .unwrap()
            .verify(&theirs)
            .unwrap();
        let g = body(&global.text);
        assert_eq!(g.origin, format!("{AUDIT_ORIGIN}/global"));
        assert!(g.size >= v1, "the global log holds the organization's events");
    }
    // The checkpoints are in the event feed, for every stream consumer (on PostgreSQL the
    // feed shows an append once older transactions have ended: wait for it, bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let signed = loop {
        let feed = s
            .call("GET", "/v1/events?limit=1000", PLATFORM, None)
            .await
            .expect(200)
            .json();
        let signed: Vec<_> = feed["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "keyledger.AuditCheckpointSigned.v1")
            .map(|e| e["data"]["note"].as_str().unwrap_or_default().to_owned())
            .collect();
        let both = signed.contains(&note1) && signed.contains(&note2);
        if both || std::time::Instant::now() > deadline {
            break signed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(signed.contains(&note1) && signed.contains(&note2), "{signed:?}");

    // No response carried the client secret.
    let secret = s.demo.client_secret.clone();
    for text in s.transcript.lock().unwrap().iter() {
        assert!(
            !text.contains(secret.as_str()),
            "a response holds the client secret"
        );
    }
}

async fn bad_proof_queries_are_400_and_readers_are_held_to_their_scope(s: &Server) {
    let org = new_org();
    s.register(&org).await;
    let version = version_of(s, &org).await;
    let size = body(&checkpoint_at(s, &org, version).await).size;
    for (query, field) in [
        ("", "version"),
        ("?version=0", "version"),
        ("?version=x", "version"),
        ("?version=1&tree_size=0", "tree_size"),
        (&format!("?version={}", size + 1) as &str, "version"),
        ("?version=1&tree_size=99", "tree_size"),
        ("?version=1&nonsense=1", "nonsense"),
    ] {
        let reply = s
            .call(
                "GET",
                &org_path(&org, &format!("/audit/proof{query}")),
                AUDITOR,
                None,
            )
            .await
            .problem(400, "invalid_request");
        assert!(reply.text.contains(field), "{query}: {}", reply.text);
    }
    for (query, field) in [
        ("?from=1", "to"),
        ("?to=1", "from"),
        ("?from=2&to=1", "from"),
        ("?from=0&to=99", "to"),
    ] {
        let reply = s
            .call(
                "GET",
                &org_path(&org, &format!("/audit/consistency{query}")),
                AUDITOR,
                None,
            )
            .await
            .problem(400, "invalid_request");
        assert!(reply.text.contains(field), "{query}: {}", reply.text);
    }
    s.call(
        "GET",
        &org_path(&org, "/audit/consistency?from=0&to=1"),
        AUDITOR,
        None,
    )
    .await
    .expect(200);

    for rest in [
        "/audit/checkpoint",
        "/audit/proof?version=1",
        "/audit/consistency?from=0&to=1",
        "/audit/bundle",
    ] {
        // Platform and billing do not read an organization's audit log; an administrator of
        // another organization neither; a missing organization is 404.
        for token in [PLATFORM, BILLING, ADMIN_OTHER] {
            s.call("GET", &org_path(&org, rest), token, None)
                .await
                .problem(403, "forbidden");
        }
        s.call("GET", &org_path(&new_org(), rest), AUDITOR, None)
            .await
            .problem(404, "organization_not_found");
        s.call("GET", &org_path("not-a-uuid", rest), AUDITOR, None)
            .await
            .problem(400, "invalid_request");
        s.send("GET", &org_path(&org, rest), None, None, &[])
            .await
            .problem(401, "unauthenticated");
    }
    // The global checkpoint: not for administrators, support or billing.
    for token in [ADMIN, SUPPORT, BILLING] {
        s.call("GET", "/v1/audit/checkpoint", token, None)
            .await
            .problem(403, "forbidden");
    }
    // Refused reads appended nothing to the organization.
    let page = s
        .call("GET", "/v1/events?limit=1000", PLATFORM, None)
        .await
        .expect(200)
        .json();
    let org_events = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["source"] == format!("keyledger/organizations/{org}"))
        .count();
    assert_eq!(u64::try_from(org_events).unwrap(), version);
}
