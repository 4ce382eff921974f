//! Which Merkle logs a leaf belongs to: the global log, and its organization's.
//!
//! The log names are the domain's [`AuditLog`]; its text form (`global`, or the organization
//! id) is also the storage key of a log's rows.

use keyledger_domain::StreamId;

pub use keyledger_domain::AuditLog;

/// The organization log that events of `stream` feed, if any: none for a stream no
/// organization owns (stream `audit`, ADR 0025). Every event also feeds the global log.
pub fn org_log_of(stream: StreamId) -> Option<AuditLog> {
    stream.org_id().map(AuditLog::Org)
}

/// The logs an event of `stream` is a leaf of: the global log first.
pub fn fed_by(stream: StreamId) -> impl Iterator<Item = AuditLog> {
    std::iter::once(AuditLog::Global).chain(org_log_of(stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyledger_domain::OrgId;

    #[test]
    fn storage_keys_round_trip() {
        let org: OrgId = "0193a1b2-0000-7000-8000-000000000001".parse().unwrap();
        for log in [AuditLog::Global, AuditLog::Org(org)] {
            assert_eq!(log.to_string().parse::<AuditLog>().unwrap(), log);
        }
        for bad in ["", "Global", "org/", "org/x", "0193a1b2"] {
            assert!(bad.parse::<AuditLog>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_org_stream_feeds_the_global_log_and_its_own_and_audit_only_the_global() {
        let org: OrgId = "0193a1b2-0000-7000-8000-000000000001".parse().unwrap();
        let logs: Vec<_> = fed_by(StreamId::for_org(org)).collect();
        assert_eq!(logs, [AuditLog::Global, AuditLog::Org(org)]);
        let logs: Vec<_> = fed_by(StreamId::Audit).collect();
        assert_eq!(logs, [AuditLog::Global]);
    }
}
