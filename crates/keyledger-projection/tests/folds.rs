//! The projection folds against histories built by the domain rules.

use keyledger_domain::testing::*;
use keyledger_domain::*;
use keyledger_projection::*;
use keyledger_store::conformance::envelopes;

fn fold(events: Vec<Event>) -> Projections {
    let mut p = Projections::default();
    for stored in envelopes(events) {
        p.apply(&stored).unwrap();
    }
    p
}

fn long_history() -> History {
    cmk_org()
        .run(admin(), |s| edit_secret_kind(s, "second-secret"))
        .rotate(&key_b())
        .plan(Plan::free())
        .switch()
        .plan(Plan::enterprise("standard"))
        .enable(&key_c())
        .health(HealthStatus::KeyDisabled)
}

#[test]
fn the_organization_view_matches_the_domain_state() {
    let h = long_history();
    let state = h.state().clone();
    let p = fold(h.events());
    let view = p.view(org_id()).unwrap();
    let org = state.org().unwrap();
    assert_eq!(view.version, state.version.0);
    assert_eq!(view.plan, org.plan);
    assert_eq!(view.encryption.mode, EncryptionMode::CustomerManaged);
    assert_eq!(view.encryption.active_data_key_id, org.active_dek);
    let k = view.encryption.customer_managed_key.as_ref().unwrap();
    assert_eq!(&k.key_identifier, org.customer_key().unwrap().key());
    assert_eq!(k.key_name, "cmk-2027");
    assert!(k.client_secret_set);
    assert_eq!(
        view.encryption.health.as_ref().unwrap().status,
        HealthStatus::KeyDisabled
    );
    let hist: Vec<_> = view
        .key_history
        .iter()
        .map(|h| (h.key_identifier.clone(), h.to.is_some()))
        .collect();
    let want: Vec<_> = org
        .key_history
        .iter()
        .map(|h| (h.key_identifier.clone(), h.to.is_some()))
        .collect();
    assert_eq!(hist, want);
    assert!(!view.encryption.can_enable_customer_managed_key);
}

#[test]
fn the_view_fold_and_the_projection_agree() {
    let events = long_history().events();
    let direct = OrganizationView::from_events(events.iter()).unwrap();
    assert_eq!(fold(events).view(org_id()).unwrap(), direct);
}

#[test]
fn a_locked_key_shows_locked_and_cannot_be_enabled() {
    let p = fold(cmk_org().plan(Plan::free()).events());
    let view = p.view(org_id()).unwrap();
    assert!(view.encryption.locked);
    assert_eq!(view.encryption.mode, EncryptionMode::CustomerManaged);
    let p = fold(cmk_org().plan(Plan::free()).switch().events());
    let view = p.view(org_id()).unwrap();
    assert!(!view.encryption.locked);
    assert!(!view.encryption.can_enable_customer_managed_key);
    assert!(view.encryption.health.is_none());
}

#[test]
fn audit_rows_fan_out_to_the_tenants_the_org_had_at_that_moment() {
    let third = Tenant {
        tenant_id: tenant_id(3),
        name: "Research".into(),
    };
    let h = cmk_org()
        .run(platform(), move |_| Scripted::AddTenant { tenant: third })
        .rotate(&key_b())
        .run(platform(), |_| Scripted::RemoveTenant {
            tenant_id: tenant_a().tenant_id,
        })
        .health(HealthStatus::KeyDisabled);
    let p = fold(h.events());
    let rows = |action: &str| -> Vec<TenantId> {
        p.audit
            .iter()
            .filter(|r| r.action == action)
            .map(|r| r.tenant_id)
            .collect()
    };
    assert_eq!(
        rows("CustomerManagedKeyEnabled"),
        vec![tenant_a().tenant_id, tenant_b().tenant_id]
    );
    assert_eq!(
        rows("CustomerManagedKeyRotated"),
        vec![tenant_a().tenant_id, tenant_b().tenant_id, tenant_id(3)]
    );
    assert_eq!(rows("KeyHealthChanged"), vec![tenant_b().tenant_id, tenant_id(3)]);
    // Bookkeeping events are not audit rows.
    assert!(rows("DataKeyGenerated").is_empty());
    assert!(rows("TenantAdded").is_empty());
    let rotated = p
        .audit
        .iter()
        .find(|r| r.action == "CustomerManagedKeyRotated")
        .unwrap();
    assert_eq!(
        rotated.details["from_key"],
        serde_json::json!(key_a().to_string())
    );
    assert_eq!(rotated.details["to_key"], serde_json::json!(key_b().to_string()));
    // Ids are unique.
    let mut ids: Vec<_> = p.audit.iter().map(|r| r.id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), p.audit.len());
}

#[test]
fn the_inventory_shows_which_deks_still_depend_on_a_key() {
    let p = fold(cmk_org().switch().enable(&key_b()).events());
    let inv: DataKeyInventory =
        serde_json::from_value(p.docs[&(Projection::DataKeyInventory, org_id())].clone()).unwrap();
    let by: Vec<(u32, Option<KeyIdentifier>)> = inv
        .data_keys
        .iter()
        .map(|d| (d.dek_id.0, d.wrapped_by.customer_key().cloned()))
        .collect();
    assert_eq!(by, vec![(1, None), (2, None), (3, None), (4, Some(key_b()))]);
    assert!(inv.data_keys[1].rewrapped_at.is_some());
}

#[test]
fn lost_deks_are_marked_in_the_inventory() {
    let p = fold(
        cmk_org()
            .health(HealthStatus::KeyNotFound)
            .declare_lost()
            .events(),
    );
    let inv: DataKeyInventory =
        serde_json::from_value(p.docs[&(Projection::DataKeyInventory, org_id())].clone()).unwrap();
    assert!(inv.data_keys.iter().find(|d| d.dek_id == DekId(2)).unwrap().lost);
    assert!(p.view(org_id()).unwrap().encryption.data_lost);
}

#[test]
fn key_health_rows_exist_only_while_customer_managed() {
    let p = fold(cmk_org().health(HealthStatus::KeyExpired).events());
    let row: KeyHealthRow =
        serde_json::from_value(p.docs[&(Projection::KeyHealth, org_id())].clone()).unwrap();
    assert_eq!(row.status, HealthStatus::KeyExpired);
    let p = fold(cmk_org().switch().events());
    assert!(!p.docs.contains_key(&(Projection::KeyHealth, org_id())));
}

#[test]
fn no_projection_row_holds_a_secret_or_wrapped_key() {
    let p = fold(long_history().events());
    let everything = format!(
        "{} {}",
        serde_json::to_string(&p.docs.values().collect::<Vec<_>>()).unwrap(),
        serde_json::to_string(&p.audit).unwrap()
    );
    assert!(!everything.contains(FIXTURE_SECRET));
    assert!(!everything.contains("second-secret"));
    assert!(!everything.contains("sealed"));
    assert!(!everything.contains("edek"));
}

#[test]
fn an_unreadable_document_is_a_typed_error() {
    let stored = envelopes(cmk_org().events());
    let event = stored[2].decode().unwrap();
    let err = Projection::OrganizationEncryption
        .apply(Some(&serde_json::json!({"nope": 1})), &stored[2], &event)
        .unwrap_err();
    assert!(matches!(err, ProjectionError::BadDocument { .. }), "{err}");
}

/// A checkpoint of stream `audit` (ADR 0025) changes no organization document and no tenant's
/// audit; the fold only moves its position past it.
#[test]
fn a_checkpoint_in_stream_audit_folds_into_nothing() {
    let events = long_history().events();
    let without = fold(events.clone());
    let mut with = Projections::default();
    let org_events = envelopes(events);
    let mut checkpoint = envelopes(vec![
        keyledger_store::conformance::checkpoint_signed(AuditLog::Org(org_id()), 3).event,
    ])
    .remove(0);
    checkpoint.stream_id = StreamId::Audit;
    checkpoint.global_position = GlobalPosition(org_events.len() as u64 + 1);
    for stored in org_events.iter().chain([&checkpoint]) {
        with.apply(stored).unwrap();
    }
    assert_eq!(with.docs, without.docs);
    assert_eq!(with.audit, without.audit);
    assert_eq!(with.position, checkpoint.global_position.0);
    for p in Projection::ALL {
        let applied = p.apply(None, &checkpoint, &checkpoint.decode().unwrap()).unwrap();
        assert_eq!((applied.doc, applied.audit.len()), (None, 0), "{p:?}");
    }
}

#[test]
fn a_deleted_key_shows_when_it_can_be_recovered_until_and_a_reminder_keeps_the_since_time() {
    let purge = at_minutes(0) + chrono::Duration::days(30);
    let deleted = cmk_org().deleted(purge);
    let since = deleted
        .state()
        .org()
        .unwrap()
        .customer_key()
        .unwrap()
        .health
        .since;
    let h = deleted.run(system(), |_| deleted_kind(purge));
    // Minutes after t0 the purge is 30 days away: no reminder yet. A reminder, 6 days before:
    let reminder = {
        let state = h.state().clone();
        decide_scripted(
            &state,
            cmd_at(system(), deleted_kind(purge), purge - chrono::Duration::days(6)),
        )
        .unwrap()
    };
    assert_eq!(reminder.len(), 1);
    let events: Vec<Event> = h.events().into_iter().chain(reminder).collect();
    let p = fold(events.clone());
    let health = p.view(org_id()).unwrap().encryption.health.unwrap();
    assert_eq!(health.status, HealthStatus::KeyDeleted);
    assert_eq!(health.recoverable_until, Some(purge));
    assert_eq!(health.since, since);
    assert!(health.detail.unwrap().contains("within_7_days"));
    let row: KeyHealthRow =
        serde_json::from_value(p.docs[&(Projection::KeyHealth, org_id())].clone()).unwrap();
    assert_eq!((row.recoverable_until, row.since), (Some(purge), since));
    // The tenant audit shows the purge date and the reminder, and nothing new on older rows.
    let health_rows: Vec<&serde_json::Value> = p
        .audit
        .iter()
        .filter(|r| r.action == "KeyHealthChanged")
        .map(|r| &r.details)
        .collect();
    let last = health_rows.last().unwrap();
    assert_eq!(last["purge_reminder"], "within_7_days", "{last}");
    assert_eq!(last["recoverable_until"], serde_json::json!(purge), "{last}");
    let enabled = fold(cmk_org().health(HealthStatus::KeyDisabled).events());
    let row = &enabled
        .audit
        .iter()
        .rfind(|r| r.action == "KeyHealthChanged")
        .unwrap()
        .details;
    assert!(row.get("recoverable_until").is_none(), "{row}");
    // The domain state agrees.
    let state = State::replay(&events);
    let domain = &state.org().unwrap().customer_key().unwrap().health;
    assert_eq!((domain.recoverable_until, domain.since), (Some(purge), since));
    // Recovered: healthy, no date.
    let recovered = cmk_org().deleted(purge).health(HealthStatus::Healthy);
    let health = fold(recovered.events())
        .view(org_id())
        .unwrap()
        .encryption
        .health
        .unwrap();
    assert_eq!(
        (health.status, health.recoverable_until),
        (HealthStatus::Healthy, None)
    );
}
