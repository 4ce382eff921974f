//! SDK errors to reasons (DESIGN.md §4): by error kind, HTTP status and the service's error
//! code (Key Vault `error.code` / `innererror.code`, Entra ID `error_codes`). Messages are never
//! parsed and never copied into the result.

use azure_core::error::{Error, ErrorKind, ErrorResponse};
use keyledger_keys::{KeyAccessError, KeyOperation, Reason};

/// Where a failed response came from: the token endpoint or the vault.
fn find_http(err: &Error) -> Option<&Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(az) = e.downcast_ref::<Error>()
            && matches!(az.kind(), ErrorKind::HttpResponse { .. })
        {
            return Some(az);
        }
        current = e.source();
    }
    None
}

fn has_io(err: &Error) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(az) = e.downcast_ref::<Error>()
            && matches!(az.kind(), ErrorKind::Io | ErrorKind::Connection)
        {
            return true;
        }
        if e.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        current = e.source();
    }
    false
}

/// The inner error code of a Key Vault error body (`error.innererror.code`), read with the
/// SDK's typed `ErrorResponse`.
fn inner_code(err: &Error) -> Option<String> {
    let ErrorKind::HttpResponse { raw_response, .. } = err.kind() else {
        return None;
    };
    let raw = raw_response.as_ref()?;
    let parsed: ErrorResponse = serde_json::from_slice(raw.body().as_ref()).ok()?;
    let detail = parsed.error?;
    detail.inner_error.and_then(|i| i.code)
}

/// The wait a 429 or 503 asks for: `retry-after-ms`, `x-ms-retry-after-ms`, or `Retry-After`
/// in seconds (the HTTP-date form is ignored).
fn retry_after(err: &Error) -> Option<std::time::Duration> {
    use azure_core::http::headers::{HeaderName, RETRY_AFTER, RETRY_AFTER_MS, X_MS_RETRY_AFTER_MS};
    let ErrorKind::HttpResponse {
        status, raw_response, ..
    } = err.kind()
    else {
        return None;
    };
    if !matches!(u16::from(*status), 429 | 503) {
        return None;
    }
    let headers = raw_response.as_ref()?.headers();
    let number = |name: HeaderName| {
        headers
            .get_optional_str(&name)
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    number(RETRY_AFTER_MS)
        .or_else(|| number(X_MS_RETRY_AFTER_MS))
        .map(std::time::Duration::from_millis)
        .or_else(|| number(RETRY_AFTER).map(std::time::Duration::from_secs))
}

/// Maps an error from an SDK call made for `operation`.
pub fn map_error(operation: KeyOperation, err: &Error) -> KeyAccessError {
    let from_credential = matches!(err.kind(), ErrorKind::Credential);
    if let Some(http) = find_http(err) {
        let ErrorKind::HttpResponse {
            status, error_code, ..
        } = http.kind()
        else {
            unreachable!("find_http returns only HttpResponse errors");
        };
        let status = u16::from(*status);
        let code = error_code.as_deref().unwrap_or("");
        let wait = retry_after(http);
        if from_credential {
            return map_entra(status, code).retry_after(wait);
        }
        let inner = inner_code(http);
        return map_vault(operation, status, code, inner.as_deref()).retry_after(wait);
    }
    if has_io(err) {
        return KeyAccessError::with_detail(Reason::VaultUnreachable, "network or TLS failure");
    }
    if from_credential {
        // The credential failed before any response: e.g. an empty secret or a bad tenant id.
        return KeyAccessError::with_detail(Reason::CredentialsInvalid, "credential could not be used");
    }
    KeyAccessError::with_detail(
        Reason::VaultError,
        format!("unexpected SDK error kind {}", kind_name(err.kind())),
    )
}

fn kind_name(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::HttpResponse { .. } => "HttpResponse",
        ErrorKind::Io => "Io",
        ErrorKind::DataConversion => "DataConversion",
        ErrorKind::Credential => "Credential",
        ErrorKind::Connection => "Connection",
        ErrorKind::Other => "Other",
    }
}

/// The Entra ID token endpoint: `error_codes` such as 7000215 (invalid secret) and 7000222
/// (expired secret). The SDK joins several codes with commas.
pub fn map_entra(status: u16, codes: &str) -> KeyAccessError {
    let detail = format!(
        "token endpoint HTTP {status} AADSTS{}",
        if codes.is_empty() { "?" } else { codes }
    );
    let has = |c: &str| codes.split(',').any(|x| x.trim() == c);
    let reason = if has("7000222") {
        Reason::CredentialsExpired
    } else if status == 429 {
        Reason::Throttled
    } else if status >= 500 {
        Reason::VaultError
    } else {
        // 7000215 (invalid secret), 700016 (unknown application), 90002 (unknown tenant) and
        // any other refusal of the client credentials.
        Reason::CredentialsInvalid
    };
    KeyAccessError::with_detail(reason, detail)
}

/// A Key Vault response: status, `error.code` and `error.innererror.code`.
pub fn map_vault(operation: KeyOperation, status: u16, code: &str, inner: Option<&str>) -> KeyAccessError {
    let detail = match inner {
        Some(i) => format!("vault HTTP {status} {code}/{i}"),
        None => format!("vault HTTP {status} {code}"),
    };
    let is = |c: &str| code == c || inner == Some(c);
    if (300..400).contains(&status) {
        return KeyAccessError::with_detail(
            Reason::VaultError,
            format!("vault HTTP {status} redirect, not followed"),
        );
    }
    let reason = match status {
        401 => Reason::CredentialsInvalid,
        403 if is("KeyDisabled") => Reason::KeyDisabled,
        403 if is("KeyExpired") => Reason::KeyExpired,
        403 if is("KeyNotYetValid") => Reason::KeyNotYetValid,
        // ForbiddenByPolicy, ForbiddenByRbac, or any other refusal of the operation.
        403 => Reason::PermissionDenied { operation },
        404 => Reason::KeyNotFound,
        408 => Reason::VaultUnreachable,
        409 if is("ObjectIsDeletedButRecoverable") || is("ObjectIsBeingDeleted") => Reason::KeyNotFound,
        400 | 409 => Reason::UnsupportedKey,
        429 => Reason::Throttled,
        s if s >= 500 => Reason::VaultError,
        _ => Reason::VaultError,
    };
    KeyAccessError::with_detail(reason, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_vault_codes_top_level_or_inner() {
        let w = KeyOperation::WrapKey;
        assert_eq!(
            map_vault(w, 403, "Forbidden", Some("KeyDisabled")).reason,
            Reason::KeyDisabled
        );
        assert_eq!(map_vault(w, 403, "KeyDisabled", None).reason, Reason::KeyDisabled);
        assert_eq!(
            map_vault(w, 403, "Forbidden", Some("ForbiddenByPolicy")).reason,
            Reason::PermissionDenied { operation: w }
        );
        assert_eq!(
            map_vault(KeyOperation::UnwrapKey, 403, "ForbiddenByRbac", None).reason,
            Reason::PermissionDenied {
                operation: KeyOperation::UnwrapKey
            }
        );
        assert_eq!(map_vault(w, 404, "KeyNotFound", None).reason, Reason::KeyNotFound);
        assert_eq!(
            map_vault(w, 401, "Unauthorized", None).reason,
            Reason::CredentialsInvalid
        );
        assert_eq!(map_vault(w, 429, "Throttled", None).reason, Reason::Throttled);
        assert_eq!(
            map_vault(w, 503, "ServiceUnavailable", None).reason,
            Reason::VaultError
        );
        assert_eq!(
            map_vault(w, 403, "Forbidden", Some("KeyExpired")).reason,
            Reason::KeyExpired
        );
        let e = map_vault(w, 403, "Forbidden", Some("KeyDisabled"));
        assert_eq!(e.detail.as_deref(), Some("vault HTTP 403 Forbidden/KeyDisabled"));
    }

    #[test]
    fn entra_codes() {
        assert_eq!(map_entra(401, "7000215").reason, Reason::CredentialsInvalid);
        assert_eq!(map_entra(401, "7000222").reason, Reason::CredentialsExpired);
        assert_eq!(map_entra(400, "700016").reason, Reason::CredentialsInvalid);
        assert_eq!(map_entra(400, "90002,1234").reason, Reason::CredentialsInvalid);
        assert_eq!(map_entra(401, "12,7000222").reason, Reason::CredentialsExpired);
        assert_eq!(map_entra(503, "").reason, Reason::VaultError);
        assert_eq!(map_entra(429, "").reason, Reason::Throttled);
    }
}
