//! A `read_all` page rendered by SQLite as one text value, so the driver hands over one value per
//! page instead of fourteen per row (sqlx copies every value of every row; that cost dominated).
//!
//! Rows are separated by U+001E (record separator) and fields by U+001F (unit separator), in
//! [`SELECT_PAGE`]'s column order. Neither occurs in what this store writes: ids, hashes and
//! times are fixed formats, and the actor and payload are JSON, which escapes every control
//! character. (The event type and causation id are free text; an imported one holding a
//! separator only makes its page take the slow path below.) A nullable field is `-` for NULL and
//! starts with `=` otherwise (never empty: `concat_ws` drops empty values as it drops NULLs). A
//! page that does not split into whole rows (e.g. a tampered column) does not decode; the caller
//! then reads it row by row, which names the bad row.

use keyledger_store::StoredEvent;
use keyledger_store::row::EnvelopeRef;

/// The events after a position, at most a limit, as one text value (NULL when there are none).
/// Each row is rendered inside the subquery, so only one value per row reaches the aggregate.
/// The aggregate has no `ORDER BY` of its own (that made SQLite sort the page through a
/// temporary b-tree): [`decode`] puts the rows in position order.
pub(crate) const SELECT_PAGE: &str = "SELECT group_concat(r, char(30)) FROM (SELECT concat_ws(char(31), position, \
     event_id, stream_id, stream_version, event_type, schema_version, occurred_at, actor, \
     ifnull('=' || command_id, '-'), ifnull('=' || correlation_id, '-'), ifnull('=' || causation_id, '-'), \
     payload, prev_hash, hash) AS r FROM events WHERE position > ? ORDER BY position LIMIT ?)";

const ROW_SEPARATOR: u8 = 0x1e;
const FIELD_SEPARATOR: u8 = 0x1f;
const FIELDS: usize = 14;

/// The events of a page in position order; `None` when the text is not a page of whole,
/// readable rows.
pub(crate) fn decode(text: &str) -> Option<Vec<StoredEvent>> {
    let bytes = text.as_bytes();
    let mut events = Vec::new();
    let mut fields = [""; FIELDS];
    let (mut count, mut start) = (0, 0);
    // One vectorized scan for both separators over the whole page (splitting field by field
    // was the largest cost of decoding).
    let ends = memchr::memchr2_iter(ROW_SEPARATOR, FIELD_SEPARATOR, bytes).chain([bytes.len()]);
    for end in ends {
        // Separators are ASCII, so `start..end` lies on character boundaries.
        *fields.get_mut(count)? = text.get(start..end)?;
        count += 1;
        start = end + 1;
        if bytes.get(end).is_none_or(|&b| b == ROW_SEPARATOR) {
            if count != FIELDS {
                return None;
            }
            events.push(decode_row(&fields)?);
            count = 0;
        }
    }
    if !events.is_sorted_by_key(|e| e.global_position) {
        events.sort_by_key(|e| e.global_position);
    }
    Some(events)
}

fn decode_row(fields: &[&str; FIELDS]) -> Option<StoredEvent> {
    let [
        position,
        event_id,
        stream_id,
        stream_version,
        event_type,
        schema_version,
        occurred_at,
        actor,
        command_id,
        correlation_id,
        causation_id,
        payload,
        prev_hash,
        hash,
    ] = *fields;
    EnvelopeRef {
        event_id,
        stream_id,
        stream_version: stream_version.parse().ok()?,
        event_type,
        schema_version: schema_version.parse().ok()?,
        occurred_at,
        actor,
        command_id: nullable(command_id)?,
        correlation_id: nullable(correlation_id)?,
        causation_id: nullable(causation_id)?,
        payload,
        prev_hash,
        hash,
    }
    .into_event(position.parse().ok()?)
    .ok()
}

/// `-` is NULL, `=value` is the value; anything else is not a field of a page.
fn nullable(field: &str) -> Option<Option<&str>> {
    match field {
        "-" => Some(None),
        _ => field.strip_prefix('=').map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(position: u64, causation: &str) -> String {
        [
            &position.to_string(),
            "01a222dc-864e-7395-91ef-b76d7513c922",
            "org-01a222dc-864b-77dc-8746-cb1cb1ed56e1",
            "1",
            "TenantAdded",
            "1",
            "2026-11-28T15:53:27.371971Z",
            r#"{"kind":"service","id":"bench","roles":["platform"],"source_ip":null}"#,
            "-",
            "-",
            causation,
            r#"{"name":"a","tenant_id":"01a222dc-864b-77dc-8746-cb1d4e26fbfe"}"#,
            &"0".repeat(64),
            &"a".repeat(64),
        ]
        .join("\u{1f}")
    }

    #[test]
    fn rows_come_back_in_position_order_with_nullable_fields() {
        let text = [row(7, "=x"), row(3, "-"), row(5, "=")].join("\u{1e}");
        let events = decode(&text).expect("a page");
        let positions: Vec<u64> = events.iter().map(|e| e.global_position.0).collect();
        assert_eq!(positions, [3, 5, 7]);
        let causations: Vec<_> = events.iter().map(|e| e.causation_id.as_deref()).collect();
        assert_eq!(causations, [None, Some(""), Some("x")]);
    }

    #[test]
    fn a_row_that_does_not_split_into_whole_fields_is_not_a_page() {
        assert!(decode(&row(1, "-")).is_some());
        // An extra field, a missing field, a nullable field without its marker, a bad position.
        assert!(decode(&format!("{}\u{1f}x", row(1, "-"))).is_none());
        assert!(decode(row(1, "-").rsplit_once('\u{1f}').unwrap().0).is_none());
        assert!(decode(&row(1, "x")).is_none());
        assert!(decode(&row(1, "-").replacen('1', "z", 1)).is_none());
        // A payload cut by a separator, as a tampered column could be.
        let tampered = row(1, "-").replace(r#""name":"a""#, "\"name\":\"\u{1e}\"");
        assert!(decode(&tampered).is_none());
    }
}
