//! `keyledger audit verify`: checks an organization's audit bundle offline, with no store and
//! no network (CONTRACT.md "Verifiable audit log"). Exit 0 prints one summary line on stdout;
//! exit 3 names the leaf or the checkpoint that does not hold; an unreadable file is exit 1,
//! and a malformed verifier key is a usage error (exit 2, from clap).

use std::path::Path;

use base64::Engine as _;
use keyledger_audit::{Bundle, Verifier, verify_bundle};

use crate::report::{Failure, Outcome};

/// Bundles larger than this are refused before parsing (a 100,000-event bundle is ~115 MB).
const MAX_BUNDLE_BYTES: u64 = 1 << 30;

pub(crate) fn verify(
    bundle: &Path,
    verifier: &Verifier,
    previous: Option<&Path>,
) -> Result<Outcome, Failure> {
    let text = read(bundle, "bundle")?;
    // A note ends with exactly one newline; a saved copy often gains another (`jq -r`, an
    // editor), which is not an edit of the checkpoint.
    let previous = previous
        .map(|p| read(p, "previous checkpoint").map(|t| format!("{}\n", t.trim_end_matches('\n'))))
        .transpose()?;
    let parsed: Bundle = match serde_json::from_str(&text) {
        Ok(b) => b,
        Err(e) => {
            // serde_json's message gives the line and column; it quotes no content.
            eprintln!(
                "keyledger: audit bundle {}: not a keyledger audit bundle: {e}",
                bundle.display()
            );
            return Ok(Outcome::AuditFailed);
        }
    };
    match verify_bundle(&parsed, verifier, previous.as_deref()) {
        Ok(v) => {
            let extends = v.extends.map_or_else(String::new, |m| {
                format!(", extends the previous checkpoint at size {m}")
            });
            println!(
                "verified organization {}: {} leaves, checkpoint {} root {} signed by {}{extends}",
                v.organization,
                v.checkpoint.size(),
                v.checkpoint.origin(),
                base64::engine::general_purpose::STANDARD.encode(v.checkpoint.root()),
                verifier.name(),
            );
            Ok(Outcome::Done)
        }
        Err(e) => {
            let line = format!(
                "keyledger: audit bundle {} does not verify: {e}",
                bundle.display()
            );
            eprintln!("{}", line.replace(['\n', '\r'], " "));
            Ok(Outcome::AuditFailed)
        }
    }
}

fn read(path: &Path, what: &str) -> Result<String, Failure> {
    let failure = |e: &std::io::Error| Failure::new(format!("cannot read the {what} {}", path.display()), e);
    let len = std::fs::metadata(path).map_err(|e| failure(&e))?.len();
    if len > MAX_BUNDLE_BYTES {
        return Err(Failure::msg(
            format!("cannot read the {what} {}", path.display()),
            "larger than 1 GiB",
        ));
    }
    std::fs::read_to_string(path).map_err(|e| failure(&e))
}
