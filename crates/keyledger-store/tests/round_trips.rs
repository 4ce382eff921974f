//! Property round trips: seal/open of arbitrary values, and the SQL column form of envelopes
//! (which must keep the hash valid).

use std::sync::Arc;

use keyledger_domain::{GlobalPosition, StreamVersion};
use keyledger_store::chain::{StreamHead, envelope_hash, legacy_seal_aad, prepare_append};
use keyledger_store::conformance::{cmk_enabled, dek_generated, new_stream, tenant_added};
use keyledger_store::row::EnvelopeColumns;
use keyledger_store::{KeyRing, OpenError, open_event};
use proptest::prelude::*;

proptest! {
    #[test]
    fn seal_then_open_returns_the_value(clear in proptest::collection::vec(any::<u8>(), 0..600),
                                        field in "[a-z_.\\[\\]0-9]{1,40}", version in 1u64..1_000_000) {
        let ring = KeyRing::generate();
        let stream = new_stream();
        let aad = legacy_seal_aad(&stream, StreamVersion(version), &field);
        let sealed = ring.seal(&aad, &clear).unwrap();
        prop_assert_eq!(sealed.nonce.len(), 12);
        prop_assert_eq!(&*ring.open(&sealed, &aad).unwrap(), clear.as_slice());
        let moved = legacy_seal_aad(&stream, StreamVersion(version + 1), &field);
        let is_auth_error = matches!(ring.open(&sealed, &moved), Err(OpenError::Authentication { .. }));
        prop_assert!(is_auth_error);
    }

    #[test]
    fn sql_columns_round_trip_and_keep_the_hash(name in "\\PC{0,80}", secret in "[ -~]{1,64}",
                                                edek in proptest::collection::vec(any::<u8>(), 1..300)) {
        let ring = Arc::new(KeyRing::generate());
        let stream = new_stream();
        let prepared = prepare_append(
            &ring,
            stream,
            StreamVersion::NONE,
            &StreamHead::empty(),
            vec![tenant_added(&name), cmk_enabled(&secret), dek_generated(&edek)],
            None,
        )
        .unwrap();
        for (i, e) in prepared.into_iter().enumerate() {
            let mut e = e;
            e.global_position = GlobalPosition(u64::try_from(i).unwrap() + 10);
            let back = EnvelopeColumns::from_event(&e).unwrap().into_event(i64::try_from(i).unwrap() + 10).unwrap();
            prop_assert_eq!(&back, &e);
            prop_assert_eq!(envelope_hash(&back), back.hash.clone());
            open_event(&ring, &back).unwrap();
        }
    }
}
