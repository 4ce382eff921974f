-- One single-row INSERT of an event-sized row per transaction (run by pgbench).
INSERT INTO pgbench_events (event_id, stream_id, stream_version, event_type, schema_version, occurred_at,
    actor, command_id, correlation_id, causation_id, payload, prev_hash, hash)
VALUES (gen_random_uuid()::text, 'org-' || gen_random_uuid()::text, 1, 'TenantAdded', 1,
    '2026-11-28T10:00:00.000000Z',
    '{"id":"bench","kind":"service","roles":["platform"],"source_ip":null}', NULL, NULL, NULL,
    '{"name":"bench-tenant-000000","tenant_id":"01900000-0000-7000-8000-000000000001"}',
    '0000000000000000000000000000000000000000000000000000000000000000',
    'b2d94c59b3b7b8dc589afa1c614760d23b1b9863f017273ba64ec6260614ae15');
