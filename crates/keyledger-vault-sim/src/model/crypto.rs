//! Cryptographic operations: wrap, unwrap, encrypt and decrypt with RSA-OAEP-256.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rsa::Oaep;
use serde_json::{Value, json};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::keys::{KeyMaterial, kid};
use super::{AkvError, Vault};

/// A cryptographic operation on a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CryptoOp {
    WrapKey,
    UnwrapKey,
    Encrypt,
    Decrypt,
}

impl CryptoOp {
    pub fn name(&self) -> &'static str {
        match self {
            CryptoOp::WrapKey => "wrapKey",
            CryptoOp::UnwrapKey => "unwrapKey",
            CryptoOp::Encrypt => "encrypt",
            CryptoOp::Decrypt => "decrypt",
        }
    }
    fn seals(&self) -> bool {
        matches!(self, CryptoOp::WrapKey | CryptoOp::Encrypt)
    }
}

impl Vault {
    /// wrapkey / unwrapkey / encrypt / decrypt with RSA-OAEP-256. Returns `{kid, value}`.
    pub fn crypto(
        &self,
        base: &str,
        name: &str,
        version: Option<&str>,
        op: CryptoOp,
        alg: &str,
        input: &[u8],
    ) -> Result<Value, AkvError> {
        let (display_name, kv) = {
            let s = self.lock();
            let (entry, kv) = s.key_version(name, version)?;
            (entry.name.clone(), kv.clone())
        };
        let now = self.clock.unix();
        let op_name = op.name();
        if !kv.enabled {
            return Err(AkvError::forbidden(
                "KeyDisabled",
                format!("Operation {op_name} is not allowed on a disabled key."),
            ));
        }
        if kv.nbf.is_some_and(|nbf| nbf > now) {
            return Err(AkvError::forbidden(
                "KeyNotYetValid",
                format!("Operation {op_name} is not allowed on a key that is not yet valid."),
            ));
        }
        // An expired key still decrypts and unwraps what it protected; it no longer seals.
        if op.seals() && kv.exp.is_some_and(|exp| exp <= now) {
            return Err(AkvError::forbidden(
                "KeyExpired",
                format!("Operation {op_name} is not allowed on an expired key."),
            ));
        }
        if !kv.key_ops.iter().any(|o| o == op_name) {
            return Err(AkvError::bad_parameter(format!(
                "Operation {op_name} is not permitted on this key."
            )));
        }
        let KeyMaterial::Rsa(rsa_key) = &kv.key else {
            return Err(AkvError::bad_parameter(format!(
                "Operation {op_name} is not supported for EC keys."
            )));
        };
        if alg != "RSA-OAEP-256" {
            return Err(AkvError::bad_parameter(format!(
                "Algorithm {alg} is not supported by the simulated vault; use RSA-OAEP-256."
            )));
        }
        let output = if op.seals() {
            rsa_key
                .to_public_key()
                .encrypt(&mut rand::thread_rng(), Oaep::new::<Sha256>(), input)
                .map_err(|_| AkvError::bad_parameter("The value is too long for this key."))?
        } else {
            rsa_key
                .decrypt(Oaep::new::<Sha256>(), input)
                .map_err(|_| AkvError::bad_parameter("The parameter value is not valid for this key."))?
        };
        let value = B64.encode(&output);
        drop(Zeroizing::new(output));
        Ok(json!({"kid": kid(base, &display_name, &kv.version), "value": value}))
    }
}
