//! Which Merkle log a leaf belongs to: the global log, or one organization's.

use std::fmt;
use std::str::FromStr;

use keyledger_domain::{OrgId, StreamId};

/// One append-only Merkle log (CONTRACT.md "Verifiable audit log").
///
/// Its storage key ([`fmt::Display`], parsed back by [`FromStr`]) is `global` or
/// `org/<org_id>`: the suffix of the checkpoint origin `<audit.origin>/global` or
/// `<audit.origin>/org/<org_id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuditLog {
    /// Every event, in commit (global position) order.
    Global,
    /// The events of one organization's stream: leaf `i` is stream version `i + 1`.
    Org(OrgId),
}

impl AuditLog {
    /// The organization log that events of `stream` feed, if any. Every event also feeds the
    /// global log.
    pub fn of_stream(stream: StreamId) -> Option<AuditLog> {
        // TODO(stream audit): once a stream can be something other than an organization's (the
        // `audit` stream of signed checkpoints), return `None` for it: it feeds only the global
        // log.
        Some(AuditLog::Org(stream.org_id()))
    }

    /// The logs an event of `stream` is a leaf of: the global log first.
    pub fn fed_by(stream: StreamId) -> impl Iterator<Item = AuditLog> {
        std::iter::once(AuditLog::Global).chain(Self::of_stream(stream))
    }
}

impl fmt::Display for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditLog::Global => f.write_str("global"),
            AuditLog::Org(org) => write!(f, "org/{org}"),
        }
    }
}

/// A storage key that names no log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} names no audit log (expected \"global\" or \"org/<uuid>\")")]
pub struct BadLogKey(pub String);

impl FromStr for AuditLog {
    type Err = BadLogKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "global" {
            return Ok(AuditLog::Global);
        }
        s.strip_prefix("org/")
            .and_then(|id| id.parse().ok())
            .map(AuditLog::Org)
            .ok_or_else(|| BadLogKey(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_keys_round_trip() {
        let org: OrgId = "0193a1b2-0000-7000-8000-000000000001".parse().unwrap();
        for log in [AuditLog::Global, AuditLog::Org(org)] {
            assert_eq!(log.to_string().parse::<AuditLog>(), Ok(log));
        }
        assert_eq!(
            AuditLog::Org(org).to_string(),
            "org/0193a1b2-0000-7000-8000-000000000001"
        );
        for bad in [
            "",
            "Global",
            "org/",
            "org/x",
            "orgs/0193a1b2-0000-7000-8000-000000000001",
        ] {
            assert!(bad.parse::<AuditLog>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_org_stream_feeds_the_global_log_and_its_own() {
        let org: OrgId = "0193a1b2-0000-7000-8000-000000000001".parse().unwrap();
        let logs: Vec<_> = AuditLog::fed_by(StreamId::for_org(org)).collect();
        assert_eq!(logs, [AuditLog::Global, AuditLog::Org(org)]);
    }
}
