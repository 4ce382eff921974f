//! One test per rule bullet of DESIGN.md §2 (R1–R13), named `rNN_…`, so the rules can be read
//! off the test names. Each is a given/when/then over `decide`.

use keyledger_domain::testing::*;
use keyledger_domain::*;
use secrecy::SecretString;

fn enterprise() -> Plan {
    Plan::enterprise("standard")
}

fn registered() -> History {
    History::new().register(enterprise())
}

fn dek_wrapped_by(state: &State, id: u32) -> WrappedBy {
    state.org().unwrap().data_keys[&DekId(id)].wrapped_by.clone()
}

fn customer(key: &KeyIdentifier) -> WrappedBy {
    WrappedBy::Customer {
        key_identifier: key.clone(),
    }
}

fn provider() -> WrappedBy {
    WrappedBy::Provider {
        internal_key_id: "ik-1".into(),
    }
}

// ------------------------------------------------------------------------------------------
// R1 Registration

#[test]
fn r01_registration_starts_provider_managed_with_dek_1_under_the_internal_key() {
    given([])
        .when(cmd(platform(), register_kind(enterprise())))
        .then_types(&["OrganizationRegistered", "DataKeyGenerated"])
        .and_state(|s| {
            let org = s.org().unwrap();
            assert!(org.customer_key().is_none());
            assert_eq!(org.active_dek, DekId(1));
            assert_eq!(dek_wrapped_by(s, 1), provider());
            assert_eq!(org.tenants.len(), 2);
        });
}

#[test]
fn r01_an_organization_registers_only_once() {
    given(registered().events())
        .when(cmd(platform(), register_kind(enterprise())))
        .then_err_code("already_registered");
}

#[test]
fn r01_registration_refuses_a_tenant_listed_twice() {
    let kind = Scripted::RegisterOrganization {
        name: "Contoso".into(),
        plan: enterprise(),
        tenants: vec![tenant_a(), tenant_a()],
        initial_dek: provider_dek(),
    };
    given([])
        .when(cmd(platform(), kind))
        .then_err_code("invalid_request");
}

#[test]
fn r01_registration_refuses_a_blank_name() {
    let kind = Scripted::RegisterOrganization {
        name: "   ".into(),
        plan: enterprise(),
        tenants: vec![],
        initial_dek: provider_dek(),
    };
    given([])
        .when(cmd(platform(), kind))
        .then_err(DomainError::InvalidRequest {
            field: "name",
            message: "must be 1 to 200 printable characters".into(),
        });
}

#[test]
fn r01_the_first_dek_must_be_wrapped_by_the_internal_key() {
    let kind = Scripted::RegisterOrganization {
        name: "Contoso".into(),
        plan: enterprise(),
        tenants: vec![],
        initial_dek: customer_dek(&key_a()),
    };
    given([])
        .when(cmd(platform(), kind))
        .then_err_code("internal_error");
}

#[test]
fn r01_tenants_can_be_added_later() {
    let t = Tenant {
        tenant_id: tenant_id(7),
        name: "Ops".into(),
    };
    given(registered().events())
        .when(cmd(platform(), Scripted::AddTenant { tenant: t.clone() }))
        .then_types(&["TenantAdded"])
        .and_state(|s| assert!(s.org().unwrap().has_tenant(t.tenant_id)));
}

#[test]
fn r01_adding_a_tenant_twice_is_refused() {
    given(registered().events())
        .when(cmd(platform(), Scripted::AddTenant { tenant: tenant_a() }))
        .then_err(DomainError::AlreadyRegistered { what: "tenant" });
}

#[test]
fn r01_tenants_can_be_removed_later() {
    given(registered().events())
        .when(cmd(
            platform(),
            Scripted::RemoveTenant {
                tenant_id: tenant_b().tenant_id,
            },
        ))
        .then_types(&["TenantRemoved"])
        .and_state(|s| assert!(!s.org().unwrap().has_tenant(tenant_b().tenant_id)));
}

#[test]
fn r01_removing_an_unknown_tenant_is_tenant_not_found() {
    given(registered().events())
        .when(cmd(
            platform(),
            Scripted::RemoveTenant {
                tenant_id: tenant_id(9),
            },
        ))
        .then_err(DomainError::TenantNotFound);
}

#[test]
fn r01_commands_on_an_unregistered_organization_are_not_found() {
    given([])
        .when(cmd(billing(), plan_kind(Plan::free())))
        .then_err(DomainError::OrganizationNotFound);
    given([])
        .when(cmd(admin(), enable_kind(&key_a())))
        .then_err(DomainError::OrganizationNotFound);
}

// ------------------------------------------------------------------------------------------
// R2 Eligibility

#[test]
fn r02_enterprise_standard_tier_may_enable_cmk() {
    given(registered().events())
        .when(cmd(admin(), enable_kind(&key_a())))
        .then_types(&["CustomerManagedKeyEnabled", "DataKeyGenerated"]);
}

#[test]
fn r02_every_enterprise_tier_may_enable_cmk() {
    for tier in ["standard", "advanced", "unlimited"] {
        given(History::new().register(Plan::enterprise(tier)).events())
            .when(cmd(admin(), enable_kind(&key_a())))
            .then_types(&["CustomerManagedKeyEnabled", "DataKeyGenerated"]);
    }
}

#[test]
fn r02_free_plan_may_not_enable_cmk() {
    given(History::new().register(Plan::free()).events())
        .when(cmd(admin(), enable_kind(&key_a())))
        .then_err(DomainError::PlanNotEligible { plan: "free".into() });
}

#[test]
fn r02_pro_plan_may_not_enable_cmk() {
    given(History::new().register(Plan::pro()).events())
        .when(cmd(admin(), enable_kind(&key_a())))
        .then_err(DomainError::PlanNotEligible { plan: "pro".into() });
}

#[test]
fn r02_a_dry_run_test_is_also_refused_on_an_ineligible_plan() {
    let h = History::new().register(Plan::free());
    let command = Command {
        org_id: org_id(),
        actor: admin(),
        at: t0(),
        intent: Intent::TestConnection(connection(&key_a())),
    };
    let err = plan(h.state(), &command).unwrap_err();
    assert_eq!(err.code(), "plan_not_eligible");
}

// ------------------------------------------------------------------------------------------
// R3 Who

#[test]
fn r03_only_org_admins_may_enable_edit_rotate_or_switch() {
    for actor in [billing(), platform(), auditor(), support(), system()] {
        given(registered().events())
            .when(cmd(actor.clone(), enable_kind(&key_a())))
            .then_err(DomainError::Forbidden);
        given(cmk_org().events())
            .when_with(|s| cmd(actor.clone(), rotate_kind(s, &key_b())))
            .then_err(DomainError::Forbidden);
        given(cmk_org().events())
            .when_with(|s| cmd(actor.clone(), edit_secret_kind(s, "new")))
            .then_err(DomainError::Forbidden);
        given(cmk_org().events())
            .when_with(|s| cmd(actor.clone(), switch_kind(s)))
            .then_err(DomainError::Forbidden);
    }
}

#[test]
fn r03_an_admin_of_another_organization_is_forbidden() {
    given(registered().events())
        .when(cmd(admin_of_other_org(), enable_kind(&key_a())))
        .then_err(DomainError::Forbidden);
}

#[test]
fn r03_authorization_is_checked_before_existence() {
    given([])
        .when(cmd(admin_of_other_org(), enable_kind(&key_a())))
        .then_err(DomainError::Forbidden);
}

#[test]
fn r03_only_billing_may_change_the_plan() {
    for actor in [admin(), platform(), auditor(), support(), system()] {
        given(registered().events())
            .when(cmd(actor, plan_kind(Plan::free())))
            .then_err(DomainError::Forbidden);
    }
    given(registered().events())
        .when(cmd(billing(), plan_kind(Plan::free())))
        .then_types(&["PlanChanged"]);
}

#[test]
fn r03_only_platform_may_register_and_manage_tenants() {
    for actor in [admin(), billing(), auditor(), support(), system()] {
        given([])
            .when(cmd(actor.clone(), register_kind(enterprise())))
            .then_err(DomainError::Forbidden);
        given(registered().events())
            .when(cmd(actor, Scripted::AddTenant { tenant: tenant_a() }))
            .then_err(DomainError::Forbidden);
    }
}

#[test]
fn r03_only_the_engine_itself_records_health() {
    given(cmk_org().events())
        .when(cmd(admin(), health_kind(HealthStatus::KeyDisabled)))
        .then_err(DomainError::Forbidden);
    // A user given the system role is still not the engine.
    let impostor = Actor::new(ActorKind::User, "eve", [Role::System], Scope::everything());
    given(cmk_org().events())
        .when(cmd(impostor, health_kind(HealthStatus::KeyDisabled)))
        .then_err(DomainError::Forbidden);
}

#[test]
fn r03_auditors_may_not_issue_any_command() {
    given(cmk_org().events())
        .when(cmd(auditor(), declare_lost_kind(Some("T-1"))))
        .then_err(DomainError::Forbidden);
}

// ------------------------------------------------------------------------------------------
// R4 Test and save

#[test]
fn r04_test_and_save_records_the_connection_key_properties_and_a_customer_wrapped_dek() {
    given(registered().events())
        .when(cmd(admin(), enable_kind(&key_a())))
        .then_types(&["CustomerManagedKeyEnabled", "DataKeyGenerated"])
        .and_state(|s| {
            let org = s.org().unwrap();
            let k = org.customer_key().unwrap();
            assert_eq!(k.key(), &key_a());
            assert_eq!(k.properties.key_size, 2048);
            assert_eq!(k.health.status, HealthStatus::Healthy);
            assert_eq!(org.active_dek, DekId(2));
            assert_eq!(dek_wrapped_by(s, 2), customer(&key_a()));
        });
}

#[test]
fn r04_existing_data_is_not_re_encrypted_older_deks_stay_provider_wrapped() {
    given(registered().events())
        .when(cmd(admin(), enable_kind(&key_a())))
        .then_types(&["CustomerManagedKeyEnabled", "DataKeyGenerated"])
        .and_state(|s| assert_eq!(dek_wrapped_by(s, 1), provider()));
}

#[test]
fn r04_the_version_found_at_validation_is_pinned() {
    given(registered().events())
        .when(cmd(admin(), enable_kind(&key_a())))
        .then_types(&["CustomerManagedKeyEnabled", "DataKeyGenerated"])
        .and_state(|s| {
            let k = s.org().unwrap().customer_key().unwrap();
            assert_eq!(k.key().version(), Some("0000000000000000000000000000000a"));
            assert_eq!(s.org().unwrap().key_history.len(), 1);
        });
}

#[test]
fn r04_a_dek_not_wrapped_by_the_validated_key_is_refused() {
    let kind = Scripted::EnableCustomerManagedKey {
        key: validated(connection(&key_a()), t0()),
        dek: customer_dek(&key_b()),
    };
    given(registered().events())
        .when(cmd(admin(), kind))
        .then_err_code("internal_error");
}

#[test]
fn r04_only_attested_keys_reach_decide() {
    // The live test's result is a ValidatedKey that only the key-access port can build (see the
    // compile_fail doc test on ValidatedKey); here: an attested key without a pinned version is
    // refused at construction.
    let unpinned = connection(&key_a().versionless());
    assert!(ValidatedKey::attest(unpinned, properties(), t0()).is_err());
}

// ------------------------------------------------------------------------------------------
// R5 One at a time

#[test]
fn r05_enabling_when_cmk_is_already_on_is_refused() {
    given(cmk_org().events())
        .when(cmd(admin(), enable_kind(&key_b())))
        .then_err(DomainError::CmkAlreadyEnabled);
}

#[test]
fn r05_edit_is_refused_when_cmk_is_off() {
    given(registered().events())
        .when_with(|s| cmd(admin(), edit_secret_kind(s, "x")))
        .then_err(DomainError::CmkNotEnabled);
}

#[test]
fn r05_rotate_is_refused_when_cmk_is_off() {
    let kind = Scripted::RotateKey {
        key: validated(connection(&key_b()), t0()),
        evidence: RewrapEvidence {
            unwrapped: UnwrapProof::attest(key_a(), Default::default()),
            rewrapped: vec![],
        },
    };
    given(registered().events())
        .when(cmd(admin(), kind))
        .then_err(DomainError::CmkNotEnabled);
}

#[test]
fn r05_switch_is_refused_when_cmk_is_off() {
    given(registered().events())
        .when(cmd(admin(), abandon_switch_kind()))
        .then_err(DomainError::CmkNotEnabled);
}

// ------------------------------------------------------------------------------------------
// R6 Edit connection

#[test]
fn r06_editing_the_secret_records_client_secret_changed_true() {
    given(cmk_org().events())
        .when_with(|s| cmd(admin(), edit_secret_kind(s, "rotated-secret")))
        .then_types(&["CustomerManagedKeyConnectionEdited"])
        .and_events(|e| match &e[0] {
            Event::CustomerManagedKeyConnectionEdited(ed) => {
                assert!(ed.client_secret_changed);
                assert_eq!(ed.changed_fields, vec![ConnectionField::ClientSecret]);
            }
            other => panic!("{other:?}"),
        });
}

#[test]
fn r06_any_field_may_change_directory_and_application_ids() {
    let mut c = connection(&key_a());
    c.directory_id = "01900000-0000-7000-8000-0000000000d2".parse().unwrap();
    c.application_id = "01900000-0000-7000-8000-0000000000a2".parse().unwrap();
    let kind = Scripted::EditConnection {
        key: validated(c, t0()),
        rotation: None,
    };
    given(cmk_org().events())
        .when(cmd(admin(), kind))
        .then_types(&["CustomerManagedKeyConnectionEdited"])
        .and_events(|e| match &e[0] {
            Event::CustomerManagedKeyConnectionEdited(ed) => {
                assert!(!ed.client_secret_changed);
                assert_eq!(
                    ed.changed_fields,
                    vec![ConnectionField::DirectoryId, ConnectionField::ApplicationId]
                );
            }
            other => panic!("{other:?}"),
        });
}

#[test]
fn r06_an_edit_that_changes_nothing_records_nothing() {
    given(cmk_org().events())
        .when_with(|s| cmd(admin(), edit_secret_kind(s, FIXTURE_SECRET)))
        .then_nothing();
}

#[test]
fn r06_an_edit_that_changes_the_key_is_a_rotation() {
    given(cmk_org().events())
        .when_with(|s| {
            let rotation = rewrap_all(s, &customer(&key_b()));
            cmd(
                admin(),
                Scripted::EditConnection {
                    key: validated(connection(&key_b()), t0()),
                    rotation: Some(rotation),
                },
            )
        })
        .then_types(&["CustomerManagedKeyRotated", "DataKeysRewrapped"]);
}

#[test]
fn r06_an_edit_that_changes_the_key_without_rotation_evidence_is_refused() {
    let kind = Scripted::EditConnection {
        key: validated(connection(&key_b()), t0()),
        rotation: None,
    };
    given(cmk_org().events())
        .when(cmd(admin(), kind))
        .then_err_code("internal_error");
}

#[test]
fn r06_an_edit_keeps_the_key_and_its_history() {
    given(cmk_org().events())
        .when_with(|s| cmd(admin(), edit_secret_kind(s, "rotated-secret")))
        .then_types(&["CustomerManagedKeyConnectionEdited"])
        .and_state(|s| {
            let org = s.org().unwrap();
            assert_eq!(org.key_history.len(), 1);
            assert_eq!(org.customer_key().unwrap().key(), &key_a());
        });
}

// ------------------------------------------------------------------------------------------
// R7 Rotation: both keys valid

#[test]
fn r07_rotation_rewraps_every_dek_under_the_old_key_in_the_same_command() {
    let h = cmk_org().switch().enable(&key_a()).rotate(&key_b());
    // DEK 1 provider, DEK 2 customer (then provider after switch), DEK 3 provider, DEK 4 under a→b.
    given(h.events())
        .when_with(|s| cmd(admin(), rotate_kind(s, &key_c())))
        .then_types(&["CustomerManagedKeyRotated", "DataKeysRewrapped"])
        .and_events(|e| match &e[0] {
            Event::CustomerManagedKeyRotated(r) => {
                assert_eq!(r.from_key, key_b());
                assert_eq!(r.to_key, key_c());
                assert_eq!(r.rewrapped_dek_ids, vec![DekId(4)]);
            }
            other => panic!("{other:?}"),
        })
        .and_state(|s| {
            assert_eq!(dek_wrapped_by(s, 4), customer(&key_c()));
            assert_eq!(dek_wrapped_by(s, 2), provider());
        });
}

#[test]
fn r07_rotation_to_the_key_version_in_use_is_refused() {
    given(cmk_org().events())
        .when_with(|s| cmd(admin(), rotate_kind(s, &key_a())))
        .then_err(DomainError::SameKey);
}

#[test]
fn r07_rotation_to_a_new_version_of_the_same_key_name_is_accepted() {
    given(cmk_org().events())
        .when_with(|s| cmd(admin(), rotate_kind(s, &key_b())))
        .then_types(&["CustomerManagedKeyRotated", "DataKeysRewrapped"]);
}

#[test]
fn r07_rotating_back_to_an_older_key_is_allowed_for_disaster_recovery() {
    given(cmk_org().rotate(&key_b()).events())
        .when_with(|s| cmd(admin(), rotate_kind(s, &key_a())))
        .then_types(&["CustomerManagedKeyRotated", "DataKeysRewrapped"])
        .and_state(|s| {
            let org = s.org().unwrap();
            assert_eq!(org.customer_key().unwrap().key(), &key_a());
            assert_eq!(org.key_history.len(), 3);
        });
}

#[test]
fn r07_the_old_key_is_kept_in_the_key_history() {
    given(cmk_org().events())
        .when_with(|s| cmd(admin(), rotate_kind(s, &key_c())))
        .then_types(&["CustomerManagedKeyRotated", "DataKeysRewrapped"])
        .and_state(|s| {
            let hist = &s.org().unwrap().key_history;
            assert_eq!(hist[0].key_identifier, key_a());
            assert!(hist[0].to.is_some());
            assert_eq!(hist[1].key_identifier, key_c());
            assert!(hist[1].to.is_none());
        });
}

#[test]
fn r07_an_unwrap_proof_that_misses_a_dek_is_refused() {
    given(cmk_org().events())
        .when_with(|s| {
            let mut ev = rewrap_all(s, &customer(&key_b()));
            ev.unwrapped = UnwrapProof::attest(key_a(), Default::default());
            cmd(
                admin(),
                Scripted::RotateKey {
                    key: validated(connection(&key_b()), t0()),
                    evidence: ev,
                },
            )
        })
        .then_err_code("internal_error");
}

#[test]
fn r07_an_unwrap_proof_for_another_key_is_refused() {
    given(cmk_org().events())
        .when_with(|s| {
            let mut ev = rewrap_all(s, &customer(&key_b()));
            ev.unwrapped = UnwrapProof::attest(key_c(), ev.unwrapped.dek_ids().clone());
            cmd(
                admin(),
                Scripted::RotateKey {
                    key: validated(connection(&key_b()), t0()),
                    evidence: ev,
                },
            )
        })
        .then_err_code("internal_error");
}

#[test]
fn r07_deks_rewrapped_by_a_key_other_than_the_new_one_are_refused() {
    given(cmk_org().events())
        .when_with(|s| {
            let ev = rewrap_all(s, &customer(&key_c()));
            cmd(
                admin(),
                Scripted::RotateKey {
                    key: validated(connection(&key_b()), t0()),
                    evidence: ev,
                },
            )
        })
        .then_err_code("internal_error");
}

#[test]
fn r07_rotation_keeps_the_active_dek() {
    given(cmk_org().events())
        .when_with(|s| cmd(admin(), rotate_kind(s, &key_b())))
        .then_types(&["CustomerManagedKeyRotated", "DataKeysRewrapped"])
        .and_state(|s| assert_eq!(s.org().unwrap().active_dek, DekId(2)));
}

#[test]
fn r07_rotation_may_change_the_credentials_too() {
    given(cmk_org().events())
        .when_with(|s| {
            let mut c = connection(&key_b());
            c.client_secret = SecretString::from("new-secret");
            cmd(
                admin(),
                Scripted::RotateKey {
                    key: validated(c, t0()),
                    evidence: rewrap_all(s, &customer(&key_b())),
                },
            )
        })
        .then_types(&["CustomerManagedKeyRotated", "DataKeysRewrapped"])
        .and_events(|e| match &e[0] {
            Event::CustomerManagedKeyRotated(r) => {
                assert!(r.client_secret_changed);
                assert_eq!(
                    r.changed_fields,
                    vec![ConnectionField::ClientSecret, ConnectionField::KeyIdentifier]
                );
            }
            other => panic!("{other:?}"),
        });
}

// ------------------------------------------------------------------------------------------
// R8 Licensing downgrade — the seed's paragraph line by line

#[test]
fn r08_an_expired_enterprise_plan_is_downgraded_to_free_and_the_cmk_is_locked() {
    given(cmk_org().events())
        .when(cmd(billing(), plan_kind(Plan::free())))
        .then_types(&["PlanChanged", "CustomerManagedKeyLocked"]);
}

#[test]
fn r08_the_customer_managed_key_option_is_still_enabled_after_a_downgrade() {
    given(cmk_org().events())
        .when(cmd(billing(), plan_kind(Plan::free())))
        .then_types(&["PlanChanged", "CustomerManagedKeyLocked"])
        .and_state(|s| {
            let k = s.org().unwrap().customer_key().expect("still customer-managed");
            assert!(k.locked);
            assert_eq!(k.key(), &key_a());
        });
}

#[test]
fn r08_you_can_no_longer_edit_its_values() {
    given(cmk_org().plan(Plan::free()).events())
        .when_with(|s| cmd(admin(), edit_secret_kind(s, "new")))
        .then_err(DomainError::CmkLockedByPlan);
}

#[test]
fn r08_such_as_changing_key_vault_details_rotation_is_refused() {
    given(cmk_org().plan(Plan::free()).events())
        .when_with(|s| cmd(admin(), rotate_kind(s, &key_c())))
        .then_err(DomainError::CmkLockedByPlan);
}

#[test]
fn r08_you_can_switch_to_the_provider_managed_key() {
    given(cmk_org().plan(Plan::free()).events())
        .when_with(|s| cmd(admin(), switch_kind(s)))
        .then_types(&[
            "SwitchedToProviderManagedKey",
            "DataKeysRewrapped",
            "DataKeyGenerated",
        ]);
}

#[test]
fn r08_but_you_cannot_revert_to_cmk_until_the_plan_is_upgraded() {
    given(cmk_org().plan(Plan::free()).switch().events())
        .when(cmd(admin(), enable_kind(&key_a())))
        .then_err(DomainError::PlanNotEligible { plan: "free".into() });
}

#[test]
fn r08_an_upgrade_to_enterprise_unlocks_the_cmk() {
    given(cmk_org().plan(Plan::free()).events())
        .when(cmd(billing(), plan_kind(enterprise())))
        .then_types(&["PlanChanged", "CustomerManagedKeyUnlocked"])
        .and_state(|s| assert!(!s.org().unwrap().customer_key().unwrap().locked));
}

#[test]
fn r08_after_an_upgrade_cmk_may_be_enabled_again() {
    given(cmk_org().plan(Plan::free()).switch().plan(enterprise()).events())
        .when(cmd(admin(), enable_kind(&key_b())))
        .then_types(&["CustomerManagedKeyEnabled", "DataKeyGenerated"]);
}

#[test]
fn r08_a_downgrade_without_cmk_only_changes_the_plan() {
    given(registered().events())
        .when(cmd(billing(), plan_kind(Plan::free())))
        .then_types(&["PlanChanged"]);
}

#[test]
fn r08_a_downgrade_to_pro_also_locks() {
    given(cmk_org().events())
        .when(cmd(billing(), plan_kind(Plan::pro())))
        .then_types(&["PlanChanged", "CustomerManagedKeyLocked"]);
}

#[test]
fn r08_a_tier_change_inside_enterprise_does_not_lock() {
    given(cmk_org().events())
        .when(cmd(billing(), plan_kind(Plan::enterprise("advanced"))))
        .then_types(&["PlanChanged"]);
}

#[test]
fn r08_a_second_downgrade_does_not_lock_twice() {
    given(cmk_org().plan(Plan::free()).events())
        .when(cmd(billing(), plan_kind(Plan::pro())))
        .then_types(&["PlanChanged"]);
}

#[test]
fn r08_changing_to_the_same_plan_records_nothing() {
    given(cmk_org().events())
        .when(cmd(billing(), plan_kind(enterprise())))
        .then_nothing();
}

#[test]
fn r08_a_plan_change_needs_a_reason() {
    given(cmk_org().events())
        .when(cmd(
            billing(),
            Scripted::ChangePlan {
                plan: Plan::free(),
                reason: " ".into(),
            },
        ))
        .then_err_code("invalid_request");
}

// ------------------------------------------------------------------------------------------
// R9 Switch to provider-managed

#[test]
fn r09_switch_rewraps_customer_deks_under_the_internal_key_and_adds_a_provider_dek() {
    given(cmk_org().events())
        .when_with(|s| cmd(admin(), switch_kind(s)))
        .then_types(&[
            "SwitchedToProviderManagedKey",
            "DataKeysRewrapped",
            "DataKeyGenerated",
        ])
        .and_state(|s| {
            let org = s.org().unwrap();
            assert!(org.customer_key().is_none());
            assert_eq!(dek_wrapped_by(s, 2), provider());
            assert_eq!(dek_wrapped_by(s, 3), provider());
            assert_eq!(org.active_dek, DekId(3));
            assert!(org.key_history[0].to.is_some());
        });
}

#[test]
fn r09_switch_needs_every_customer_dek_to_unwrap_with_the_current_key() {
    let kind = Scripted::SwitchToProviderManagedKey {
        evidence: None,
        new_dek: provider_dek(),
        abandon_lost_data: false,
    };
    given(cmk_org().events())
        .when(cmd(admin(), kind))
        .then_err_code("internal_error");
}

#[test]
fn r09_the_new_dek_must_be_wrapped_by_the_internal_key() {
    given(cmk_org().events())
        .when_with(|s| {
            let kind = Scripted::SwitchToProviderManagedKey {
                evidence: Some(rewrap_all(s, &provider())),
                new_dek: customer_dek(&key_a()),
                abandon_lost_data: false,
            };
            cmd(admin(), kind)
        })
        .then_err_code("internal_error");
}

#[test]
fn r09_abandoning_data_without_a_loss_declaration_is_refused() {
    given(cmk_org().events())
        .when(cmd(admin(), abandon_switch_kind()))
        .then_err_code("invalid_request");
}

// ------------------------------------------------------------------------------------------
// R10 Key health

#[test]
fn r10_a_health_change_is_recorded() {
    given(cmk_org().events())
        .when(cmd(system(), health_kind(HealthStatus::KeyDisabled)))
        .then_types(&["KeyHealthChanged"])
        .and_events(|e| match &e[0] {
            Event::KeyHealthChanged(h) => {
                assert_eq!(h.from, HealthStatus::Healthy);
                assert_eq!(h.to, HealthStatus::KeyDisabled);
            }
            other => panic!("{other:?}"),
        });
}

#[test]
fn r10_the_same_status_again_records_nothing() {
    given(cmk_org().health(HealthStatus::KeyDisabled).events())
        .when(cmd(system(), health_kind(HealthStatus::KeyDisabled)))
        .then_nothing();
}

#[test]
fn r10_every_status_of_the_troubleshooting_table_can_be_recorded() {
    use HealthStatus::*;
    for status in [
        KeyExpired,
        KeyNearExpiry,
        CredentialsInvalid,
        CredentialsExpired,
        PermissionDenied,
        KeyDisabled,
        KeyDeleted,
        KeyNotFound,
        VaultUnreachable,
    ] {
        given(cmk_org().events())
            .when(cmd(system(), health_kind(status)))
            .then_types(&["KeyHealthChanged"])
            .and_state(|s| assert_eq!(s.org().unwrap().customer_key().unwrap().health.status, status));
    }
}

#[test]
fn r10_a_later_success_records_healthy() {
    given(cmk_org().health(HealthStatus::VaultUnreachable).events())
        .when(cmd(system(), health_kind(HealthStatus::Healthy)))
        .then_types(&["KeyHealthChanged"]);
}

#[test]
fn r10_health_is_not_tracked_for_provider_managed_organizations() {
    given(registered().events())
        .when(cmd(system(), health_kind(HealthStatus::KeyDisabled)))
        .then_err(DomainError::CmkNotEnabled);
}

#[test]
fn r10_an_expired_key_still_works_so_switching_is_allowed() {
    given(cmk_org().health(HealthStatus::KeyExpired).events())
        .when_with(|s| cmd(admin(), switch_kind(s)))
        .then_types(&[
            "SwitchedToProviderManagedKey",
            "DataKeysRewrapped",
            "DataKeyGenerated",
        ]);
}

#[test]
fn r10_an_expired_key_can_be_rotated_away_from() {
    given(cmk_org().health(HealthStatus::KeyExpired).events())
        .when_with(|s| cmd(admin(), rotate_kind(s, &key_c())))
        .then_types(&["CustomerManagedKeyRotated", "DataKeysRewrapped"])
        .and_state(|s| {
            assert_eq!(
                s.org().unwrap().customer_key().unwrap().health.status,
                HealthStatus::Healthy
            )
        });
}

#[test]
fn r10_expired_credentials_are_fixed_by_editing_the_connection() {
    given(cmk_org().health(HealthStatus::CredentialsExpired).events())
        .when_with(|s| cmd(admin(), edit_secret_kind(s, "fresh-secret")))
        .then_types(&["CustomerManagedKeyConnectionEdited"]);
}

/// The soft-deleted key's purge date in the countdown tests: 30 days after `t0`.
fn purge_at() -> chrono::DateTime<chrono::Utc> {
    at_minutes(0) + chrono::Duration::days(30)
}

/// Runs the monitor's `RecordKeyDeleted` at `at` on `state`, applying what it records.
fn deleted_at(
    state: State,
    at: chrono::DateTime<chrono::Utc>,
    until: chrono::DateTime<chrono::Utc>,
) -> (State, Vec<Event>) {
    let events = decide_scripted(&state, cmd_at(system(), deleted_kind(until), at)).unwrap();
    let state = events.iter().fold(state, evolve);
    (state, events)
}

fn health_of(state: &State) -> keyledger_domain::state::KeyHealth {
    state.org().unwrap().customer_key().unwrap().health.clone()
}

fn changed(e: &Event) -> &keyledger_domain::event::KeyHealthChanged {
    match e {
        Event::KeyHealthChanged(h) => h,
        other => panic!("{other:?}"),
    }
}

#[test]
fn r10_a_soft_deleted_key_records_key_deleted_with_its_purge_date() {
    given(cmk_org().events())
        .when(cmd(system(), deleted_kind(purge_at())))
        .then_types(&["KeyHealthChanged"])
        .and_events(|e| {
            let h = changed(&e[0]);
            assert_eq!((h.from, h.to), (HealthStatus::Healthy, HealthStatus::KeyDeleted));
            assert_eq!(h.recoverable_until, Some(purge_at()));
            assert_eq!(h.purge_reminder, None);
        })
        .and_state(|s| {
            let h = health_of(s);
            assert_eq!(h.status, HealthStatus::KeyDeleted);
            assert_eq!(h.recoverable_until, Some(purge_at()));
            assert!(h.status.is_revoked());
        });
}

#[test]
fn r10_only_the_monitor_records_a_deletion() {
    given(cmk_org().events())
        .when(cmd(admin(), deleted_kind(purge_at())))
        .then_err(DomainError::Forbidden);
}

#[test]
fn r10_a_deleted_key_is_reminded_at_7_days_and_at_1_day_once_each() {
    let deleted = cmk_org().deleted(purge_at());
    let since = health_of(deleted.state()).since;
    let mut state = deleted.state().clone();
    let mut reminders = Vec::new();
    // Probes every 6 hours from the deletion to past the purge date.
    let mut at = since;
    while at < purge_at() + chrono::Duration::hours(12) {
        let (next, events) = deleted_at(state, at, purge_at());
        state = next;
        for e in &events {
            let h = changed(e);
            assert_eq!(
                (h.from, h.to),
                (HealthStatus::KeyDeleted, HealthStatus::KeyDeleted)
            );
            assert_eq!(h.recoverable_until, Some(purge_at()));
            reminders.push((at, h.purge_reminder.unwrap(), h.detail.clone().unwrap()));
        }
        at += chrono::Duration::hours(6);
    }
    assert_eq!(reminders.len(), 2, "{reminders:?}");
    let (at7, r7, d7) = &reminders[0];
    assert_eq!(*r7, PurgeReminder::Within7Days);
    assert!(purge_at() - *at7 <= chrono::Duration::days(7));
    assert!(purge_at() - *at7 > chrono::Duration::days(7) - chrono::Duration::hours(6));
    assert!(d7.contains("within_7_days"), "{d7}");
    let (at1, r1, d1) = &reminders[1];
    assert_eq!(*r1, PurgeReminder::Within1Day);
    assert!(purge_at() - *at1 <= chrono::Duration::days(1));
    assert!(d1.contains("within_1_day"), "{d1}");
    // The deletion's since-time stays; the reminder is folded from the events.
    let h = health_of(&state);
    assert_eq!(h.since, since);
    assert_eq!(h.purge_reminder, Some(PurgeReminder::Within1Day));
}

#[test]
fn r10_a_reminder_is_not_repeated_after_a_replay() {
    let purge = purge_at();
    let h = cmk_org().deleted(purge);
    let (state, events) = deleted_at(h.state().clone(), purge - chrono::Duration::days(6), purge);
    assert_eq!(events.len(), 1);
    // A restarted instance folds the same events and reminds no more.
    let all: Vec<Event> = h.events().into_iter().chain(events).collect();
    let replayed = State::replay(&all);
    assert_eq!(replayed, state);
    let (_, again) = deleted_at(replayed, purge - chrono::Duration::days(5), purge);
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn r10_a_deletion_first_seen_within_a_day_records_the_1_day_reminder_with_it() {
    let purge = at_minutes(0) + chrono::Duration::hours(20);
    let h = cmk_org();
    let (state, events) = deleted_at(h.state().clone(), at_minutes(0), purge);
    assert_eq!(events.len(), 1);
    let e = changed(&events[0]);
    assert_eq!((e.from, e.to), (HealthStatus::Healthy, HealthStatus::KeyDeleted));
    assert_eq!(e.purge_reminder, Some(PurgeReminder::Within1Day));
    let (_, again) = deleted_at(state, at_minutes(60), purge);
    assert!(
        again.is_empty(),
        "the 7-day reminder is not recorded after the 1-day one: {again:?}"
    );
}

#[test]
fn r10_a_key_deleted_again_gets_its_new_purge_date_and_new_reminders() {
    let first = purge_at();
    let h = cmk_org().deleted(first);
    let (state, _) = deleted_at(h.state().clone(), first - chrono::Duration::days(6), first);
    assert_eq!(health_of(&state).purge_reminder, Some(PurgeReminder::Within7Days));
    // Recovered and deleted again between two probes: a later purge date.
    let second = first + chrono::Duration::days(20);
    let at = first - chrono::Duration::days(5);
    let (state, events) = deleted_at(state, at, second);
    assert_eq!(events.len(), 1);
    assert_eq!(changed(&events[0]).recoverable_until, Some(second));
    let h = health_of(&state);
    assert_eq!(
        (h.recoverable_until, h.purge_reminder, h.since),
        (Some(second), None, at)
    );
}

#[test]
fn r10_a_recovered_key_is_healthy_with_no_purge_date() {
    given(cmk_org().deleted(purge_at()).events())
        .when(cmd(system(), health_kind(HealthStatus::Healthy)))
        .then_types(&["KeyHealthChanged"])
        .and_events(|e| assert_eq!(changed(&e[0]).recoverable_until, None))
        .and_state(|s| {
            let h = health_of(s);
            assert_eq!(h.status, HealthStatus::Healthy);
            assert_eq!((h.recoverable_until, h.purge_reminder), (None, None));
        });
}

#[test]
fn r10_a_purged_key_is_key_not_found() {
    given(cmk_org().deleted(purge_at()).events())
        .when(cmd(system(), health_kind(HealthStatus::KeyNotFound)))
        .then_types(&["KeyHealthChanged"])
        .and_state(|s| {
            let h = health_of(s);
            assert_eq!(h.status, HealthStatus::KeyNotFound);
            assert_eq!(h.recoverable_until, None);
        });
}

#[test]
fn r10_a_key_health_change_without_the_new_fields_still_decodes() {
    let payload = serde_json::json!({
        "from": "healthy",
        "to": "key_not_found",
        "detail": "key_not_found",
        "observed_at": "2026-01-01T00:00:00Z",
    });
    let Event::KeyHealthChanged(e) = Event::decode("KeyHealthChanged", 1, payload.clone()).unwrap() else {
        panic!("not a KeyHealthChanged");
    };
    assert_eq!((e.recoverable_until, e.purge_reminder), (None, None));
    // And is written back the same: the new fields are left out when absent.
    assert_eq!(Event::KeyHealthChanged(e).payload_json().unwrap(), payload);
}

// ------------------------------------------------------------------------------------------
// R11 Data loss

#[test]
fn r11_data_loss_cannot_be_declared_while_the_key_is_recoverable() {
    let refused = decide_scripted(
        cmk_org().deleted(purge_at()).state(),
        cmd(admin(), declare_lost_kind(None)),
    )
    .unwrap_err();
    assert_eq!(refused.code(), "invalid_request");
    assert!(refused.to_string().contains("recovered"), "{refused}");
    // Once purged (key_not_found), it can.
    given(
        cmk_org()
            .deleted(purge_at())
            .health(HealthStatus::KeyNotFound)
            .events(),
    )
    .when(cmd(admin(), declare_lost_kind(None)))
    .then_types(&["CustomerDataDeclaredLost"]);
}

#[test]
fn r11_data_loss_can_only_be_declared_when_the_key_is_not_found() {
    given(cmk_org().events())
        .when(cmd(admin(), declare_lost_kind(None)))
        .then_err_code("invalid_request");
}

#[test]
fn r11_the_declaration_lists_the_lost_dek_ids() {
    given(cmk_org().health(HealthStatus::KeyNotFound).events())
        .when(cmd(admin(), declare_lost_kind(None)))
        .then_types(&["CustomerDataDeclaredLost"])
        .and_events(|e| match &e[0] {
            Event::CustomerDataDeclaredLost(d) => assert_eq!(d.lost_dek_ids, vec![DekId(2)]),
            other => panic!("{other:?}"),
        })
        .and_state(|s| assert!(s.org().unwrap().data_keys[&DekId(2)].lost));
}

#[test]
fn r11_the_declaration_is_irreversible_and_made_once() {
    given(
        cmk_org()
            .health(HealthStatus::KeyNotFound)
            .declare_lost()
            .events(),
    )
    .when(cmd(admin(), declare_lost_kind(None)))
    .then_err(DomainError::DataLost);
}

#[test]
fn r11_after_a_declaration_switching_needs_abandon_lost_data() {
    given(
        cmk_org()
            .health(HealthStatus::KeyNotFound)
            .declare_lost()
            .events(),
    )
    .when_with(|s| cmd(admin(), switch_kind(s)))
    .then_err(DomainError::DataLost);
}

#[test]
fn r11_abandoning_lost_data_switches_without_rewrapping_and_gives_a_fresh_dek() {
    given(
        cmk_org()
            .health(HealthStatus::KeyNotFound)
            .declare_lost()
            .events(),
    )
    .when(cmd(admin(), abandon_switch_kind()))
    .then_types(&["SwitchedToProviderManagedKey", "DataKeyGenerated"])
    .and_state(|s| {
        let org = s.org().unwrap();
        assert_eq!(org.active_dek, DekId(3));
        assert!(org.data_keys[&DekId(2)].lost);
        assert_eq!(dek_wrapped_by(s, 2), customer(&key_a()));
    });
}

#[test]
fn r11_after_a_declaration_edit_and_rotation_are_refused() {
    let h = cmk_org().health(HealthStatus::KeyNotFound).declare_lost();
    given(h.events())
        .when_with(|s| cmd(admin(), rotate_kind(s, &key_c())))
        .then_err(DomainError::DataLost);
    let h = cmk_org().health(HealthStatus::KeyNotFound).declare_lost();
    given(h.events())
        .when_with(|s| cmd(admin(), edit_secret_kind(s, "x")))
        .then_err(DomainError::DataLost);
}

#[test]
fn r11_support_may_declare_with_a_ticket_reference() {
    given(cmk_org().health(HealthStatus::KeyNotFound).events())
        .when(cmd(support(), declare_lost_kind(Some("SUP-1234"))))
        .then_types(&["CustomerDataDeclaredLost"]);
}

#[test]
fn r11_support_without_a_ticket_is_refused() {
    given(cmk_org().health(HealthStatus::KeyNotFound).events())
        .when(cmd(support(), declare_lost_kind(None)))
        .then_err_code("invalid_request");
}

#[test]
fn r11_after_abandoning_a_new_cmk_may_be_enabled_on_enterprise() {
    let h = cmk_org()
        .health(HealthStatus::KeyNotFound)
        .declare_lost()
        .run(admin(), |_| abandon_switch_kind());
    given(h.events())
        .when(cmd(admin(), enable_kind(&key_c())))
        .then_types(&["CustomerManagedKeyEnabled", "DataKeyGenerated"]);
}

// ------------------------------------------------------------------------------------------
// R12 Restore keeps identity

#[test]
fn r12_a_key_restored_within_retention_needs_only_health_back_to_healthy() {
    given(cmk_org().health(HealthStatus::KeyNotFound).events())
        .when(cmd(system(), health_kind(HealthStatus::Healthy)))
        .then_types(&["KeyHealthChanged"])
        .and_state(|s| assert_eq!(s.org().unwrap().customer_key().unwrap().key(), &key_a()));
}

#[test]
fn r12_a_key_restored_from_backup_keeps_its_identifier_and_deks() {
    let before = cmk_org().health(HealthStatus::KeyNotFound);
    let deks_before = before.state().org().unwrap().data_keys.clone();
    given(before.events())
        .when(cmd(system(), health_kind(HealthStatus::Healthy)))
        .then_types(&["KeyHealthChanged"])
        .and_state(|s| assert_eq!(s.org().unwrap().data_keys, deks_before));
}

#[test]
fn r12_a_database_restored_under_an_old_key_regains_access_by_rotating_back() {
    given(cmk_org().rotate(&key_c()).events())
        .when_with(|s| cmd(admin(), rotate_kind(s, &key_a())))
        .then_types(&["CustomerManagedKeyRotated", "DataKeysRewrapped"])
        .and_state(|s| assert_eq!(dek_wrapped_by(s, 2), customer(&key_a())));
}

// ------------------------------------------------------------------------------------------
// R13 Secrets

const NEW_SECRET: &str = "r13-very-secret-value";

fn all_secret_bearing_events() -> Vec<Event> {
    let h = cmk_org()
        .run(admin(), |s| edit_secret_kind(s, NEW_SECRET))
        .rotate(&key_b())
        .switch();
    h.events()
}

#[test]
fn r13_public_payloads_hold_no_secret_and_no_wrapped_key() {
    for e in all_secret_bearing_events() {
        let public = e.public_payload().to_string();
        assert!(!public.contains(NEW_SECRET), "{public}");
        assert!(!public.contains(FIXTURE_SECRET), "{public}");
        assert!(!public.contains("edek"), "{public}");
        assert!(!public.contains("redacted"), "{public}");
    }
}

#[test]
fn r13_public_connections_say_client_secret_set() {
    let events = all_secret_bearing_events();
    let enabled = events
        .iter()
        .find(|e| e.event_type() == "CustomerManagedKeyEnabled")
        .unwrap();
    assert_eq!(
        enabled.public_payload()["connection"]["client_secret_set"],
        serde_json::json!(true)
    );
}

#[test]
fn r13_events_with_open_secrets_refuse_to_serialize() {
    for e in all_secret_bearing_events() {
        let mut has_protected = false;
        let mut e2 = e.clone();
        e2.for_each_protected(|_, _| has_protected = true);
        if has_protected {
            let err = e.payload_json().unwrap_err().to_string();
            assert!(!err.contains(NEW_SECRET));
        }
    }
}

#[test]
fn r13_debug_output_never_shows_a_secret() {
    let h = cmk_org().run(admin(), |s| edit_secret_kind(s, NEW_SECRET));
    let state = h.state().clone();
    let debug = format!("{:?} {:?}", state, h.events());
    assert!(!debug.contains(NEW_SECRET));
    assert!(!debug.contains(FIXTURE_SECRET));
    let kind = edit_secret_kind(&State::default(), NEW_SECRET);
    assert!(!format!("{kind:?}").contains(NEW_SECRET));
}

#[test]
fn r13_edits_that_change_the_secret_show_client_secret_changed_but_not_the_secret() {
    let events = cmk_org()
        .run(admin(), |s| edit_secret_kind(s, NEW_SECRET))
        .events();
    let edited = events.last().unwrap().public_payload();
    assert_eq!(edited["client_secret_changed"], serde_json::json!(true));
    assert!(!edited.to_string().contains(NEW_SECRET));
}

#[test]
fn r11_a_loss_declaration_ends_with_the_switch_that_abandons_it() {
    // Found by the model test: re-enabling the same key identifier after abandoning its data
    // must not let a later switch abandon the new, intact DEK.
    let h = cmk_org()
        .health(HealthStatus::KeyNotFound)
        .declare_lost()
        .run(admin(), |_| abandon_switch_kind())
        .enable(&key_a());
    given(h.events())
        .when(cmd(admin(), abandon_switch_kind()))
        .then_err_code("invalid_request");
    let h = cmk_org()
        .health(HealthStatus::KeyNotFound)
        .declare_lost()
        .run(admin(), |_| abandon_switch_kind())
        .enable(&key_a());
    given(h.events())
        .when_with(|s| cmd(admin(), switch_kind(s)))
        .then_types(&[
            "SwitchedToProviderManagedKey",
            "DataKeysRewrapped",
            "DataKeyGenerated",
        ]);
}

// ------------------------------------------------------------------------------------------
// plan and decide

#[test]
fn decide_refuses_key_results_that_are_not_those_of_the_commands_key_work() {
    let h = History::new().register(Plan::enterprise("standard"));
    let command = Command {
        org_id: org_id(),
        actor: platform(),
        at: t0(),
        intent: Intent::AddTenant(tenant_id_named(3)),
    };
    assert!(matches!(plan(h.state(), &command), Ok(KeyWork::None)));
    let err = decide(
        h.state(),
        command,
        KeyResults::ProviderWrapped { dek: provider_dek() },
    )
    .unwrap_err();
    assert_eq!(err.code(), "internal_error", "{err:?}");
}

fn tenant_id_named(n: u8) -> Tenant {
    Tenant {
        tenant_id: tenant_id(n),
        name: format!("Tenant {n}"),
    }
}

// R3 for reads: `authorize_read`, the counterpart of the command check in `plan`.

fn tenant_auditor(tenant: TenantId) -> Actor {
    Actor::new(
        ActorKind::User,
        "tina@example.com",
        [Role::Auditor],
        Scope {
            organizations: Reach::Only([org_id()].into()),
            tenants: Reach::Only([tenant].into()),
        },
    )
}

#[test]
fn r03_reads_need_one_of_the_reads_roles_and_the_organization_in_scope() {
    let org = org_id();
    assert!(authorize_read(&billing(), org, Read::View).is_ok());
    assert_eq!(
        authorize_read(&billing(), org, Read::DataKeys).err(),
        Some(DomainError::Forbidden)
    );
    assert_eq!(
        authorize_read(&admin(), org, Read::Events).err(),
        Some(DomainError::Forbidden)
    );
    assert!(authorize_read(&platform(), org, Read::Events).is_ok());
    assert!(authorize_read(&support(), org, Read::DataKeys).is_ok());
    assert_eq!(
        authorize_read(&admin_of_other_org(), org, Read::View).err(),
        Some(DomainError::Forbidden)
    );
}

#[test]
fn r03_a_missing_organization_is_not_found_for_a_reader_in_scope() {
    let reader = admin();
    let scope = authorize_read(&reader, org_id(), Read::View).unwrap();
    assert_eq!(scope.admit(None), Err(DomainError::OrganizationNotFound));
    assert_eq!(scope.admit(Some(&[])), Ok(()));
}

#[test]
fn r03_a_tenant_scoped_auditor_reads_only_organizations_holding_its_tenant() {
    let reader = tenant_auditor(tenant_a().tenant_id);
    let scope = authorize_read(&reader, org_id(), Read::View).unwrap();
    assert_eq!(scope.admit(Some(&[tenant_a()])), Ok(()));
    let other = Tenant {
        tenant_id: tenant_id(9),
        name: "Other".into(),
    };
    assert_eq!(scope.admit(Some(&[other])), Err(DomainError::Forbidden));
    // It cannot probe for organizations: a missing one is forbidden too.
    assert_eq!(scope.admit(None), Err(DomainError::Forbidden));
}

#[test]
fn r03_only_platform_reads_the_event_feed() {
    assert!(authorize_cross_read(&platform(), CrossRead::EventFeed).is_ok());
    for reader in [admin(), auditor(), support(), billing()] {
        assert_eq!(
            authorize_cross_read(&reader, CrossRead::EventFeed),
            Err(DomainError::Forbidden)
        );
    }
}

#[test]
fn r03_the_verifiable_audit_log_is_read_by_admins_auditors_and_support() {
    let org = org_id();
    for reader in [admin(), auditor(), support()] {
        assert!(authorize_read(&reader, org, Read::AuditLog).is_ok(), "{reader:?}");
    }
    for reader in [platform(), billing(), admin_of_other_org()] {
        assert_eq!(
            authorize_read(&reader, org, Read::AuditLog).err(),
            Some(DomainError::Forbidden),
            "{reader:?}"
        );
    }
}

#[test]
fn r03_the_global_audit_log_is_read_by_platform_and_auditors_of_every_organization() {
    let everywhere = Actor::new(
        ActorKind::User,
        "ada@audit.example.com",
        [Role::Auditor],
        Scope::everything(),
    );
    assert!(authorize_cross_read(&platform(), CrossRead::GlobalAuditLog).is_ok());
    assert!(authorize_cross_read(&everywhere, CrossRead::GlobalAuditLog).is_ok());
    // An auditor of one organization, and every other role, may not.
    for reader in [auditor(), admin(), support(), billing()] {
        assert_eq!(
            authorize_cross_read(&reader, CrossRead::GlobalAuditLog),
            Err(DomainError::Forbidden),
            "{reader:?}"
        );
    }
}

#[test]
fn r03_a_tenants_audit_log_needs_an_audit_role_and_the_tenant_in_scope() {
    let tenant = tenant_a().tenant_id;
    assert!(authorize_cross_read(&auditor(), CrossRead::TenantAudit(tenant)).is_ok());
    assert_eq!(
        authorize_cross_read(&platform(), CrossRead::TenantAudit(tenant)),
        Err(DomainError::Forbidden)
    );
    let scoped = tenant_auditor(tenant_id(9));
    assert_eq!(
        authorize_cross_read(&scoped, CrossRead::TenantAudit(tenant)),
        Err(DomainError::Forbidden)
    );
    assert!(authorize_cross_read(&scoped, CrossRead::TenantAudit(tenant_id(9))).is_ok());
}
