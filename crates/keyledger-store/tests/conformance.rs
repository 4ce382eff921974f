//! The store conformance suite on the in-memory backend.

keyledger_store::conformance_suite!(keyledger_store::conformance::MemoryFixture);
