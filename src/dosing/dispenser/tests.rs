//! The dispenser core's rules, each driven step by step through the same inputs the
//! controller's task gives it.

use super::*;
use crate::dosing::engine::Role;
use std::path::Path;

const SCHEDULE: &str = r#"
[patient]
id = "p-1"
timezone = "Europe/London"

[[medication]]
name = "Metformin"
slot = 0
units = 1
times = ["08:00"]

[[medication]]
name = "Paracetamol"
slot = 4
units = 2
prn = { min_interval = "4h", max_per_24h = 4 }
"#;

fn at(hh_mm: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&format!("2026-03-23T{hh_mm}:00Z"))
        .unwrap_or_else(|e| panic!("{e}"))
        .with_timezone(&Utc)
}

/// The appliance's two clocks: `wall` as set, `mono` seconds since boot.
fn now(wall: DateTime<Utc>, mono_s: u64) -> Instant {
    Instant {
        wall,
        mono: Duration::from_secs(mono_s),
    }
}

/// The test schedule, responsible since `since`, as a restart finds it.
fn restored(since: &str) -> Restored {
    let schedule =
        Schedule::parse(SCHEDULE, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e:?}"));
    Restored {
        schedules: vec![schedule],
        since: Some(at(since)),
        ..Restored::default()
    }
}

/// A carousel of 8 slots of 250 units.
const GEOMETRY: Geometry = Geometry {
    slots: 8,
    capacity: 250,
};

/// A dispenser started at 07:00 (mono 0), homed, with stock in its slots.
fn started() -> Dispenser {
    let t0 = now(at("07:00"), 0);
    let mut d = Dispenser::on_restart(restored("07:00"), GEOMETRY, t0);
    let fx = d.start(t0);
    assert!(matches!(fx.as_slice(), [Effect::Home]), "{fx:?}");
    d.on_homed(Ok(12), t0);
    for slot in [0, 4] {
        let fx = d.on_command(refill(slot, 30), Some(1), t0);
        assert!(replies(&fx).iter().all(|a| a.is_ok()), "{fx:?}");
    }
    d
}

fn refill(slot: u8, added: u32) -> Command {
    Command::Refill {
        slot,
        added,
        expiry: None,
        actor: "pharmacist-1".into(),
        note: "lot 7".into(),
    }
}

fn prn() -> Command {
    Command::Prn {
        patient: "p-1".into(),
        medication: "paracetamol".into(),
        request: PrnRequest {
            actor: "p-1".into(),
            role: Role::Patient,
            override_reason: None,
        },
    }
}

fn replies(fx: &[Effect]) -> Vec<&Answer> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Reply { answer, .. } => Some(answer),
            _ => None,
        })
        .collect()
}

fn turns(fx: &[Effect]) -> Vec<(u8, u32, bool)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Turn {
                slot,
                units,
                durable_first,
            } => Some((*slot, *units, *durable_first)),
            _ => None,
        })
        .collect()
}

/// Dose records emitted: (outcome, reason).
fn doses(fx: &[Effect]) -> Vec<(Outcome, Option<String>)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Emit(Event::Dose { record, reason, .. }) => {
                Some((record.outcome, reason.clone()))
            }
            _ => None,
        })
        .collect()
}

fn report(drops_seen: u32, returned_home: bool) -> Result<DropReport, CarouselError> {
    Ok(DropReport {
        slot: 0,
        requested: 1,
        drops_seen,
        stray_drops: 0,
        stray_from: None,
        returned_home,
    })
}

/// Ticks every minute from `from` (mono `from_s`) for `minutes`, answering each turn with
/// `drop`; returns every effect.
fn run(
    d: &mut Dispenser,
    from: DateTime<Utc>,
    from_s: u64,
    minutes: i64,
    drop: impl Fn() -> Turned,
) -> Vec<Effect> {
    let mut all = Vec::new();
    for m in 0..=minutes {
        let t = now(from + chrono::Duration::minutes(m), from_s + 60 * m as u64);
        let mut fx = d.on_tick(t);
        // The carousel answers each turn with `drop` and finds home whenever asked.
        while let Some(i) = fx
            .iter()
            .position(|e| matches!(e, Effect::Turn { .. } | Effect::Home))
        {
            let rest = fx.split_off(i + 1);
            let homing = matches!(fx.last(), Some(Effect::Home));
            all.append(&mut fx);
            fx = if homing {
                d.on_homed(Ok(5), t)
            } else {
                d.on_drop(drop(), t)
            };
            fx.extend(rest);
        }
        all.extend(fx);
    }
    all
}

#[test]
fn a_restart_homes_the_carousel_without_dispensing() {
    let t0 = now(at("07:00"), 0);
    let mut d = Dispenser::on_restart(Restored::default(), GEOMETRY, t0);
    let fx = d.start(t0);
    assert!(matches!(fx.as_slice(), [Effect::Home]), "{fx:?}");
    assert!(d.busy());
    let fx = d.on_homed(Ok(3), t0);
    assert!(turns(&fx).is_empty());
    assert!(!d.busy());
}

#[test]
fn the_intent_is_recorded_before_the_carousel_turns_and_must_be_durable_first() {
    let mut d = started();
    let fx = d.on_tick(now(at("08:00"), 3600));
    let intent = fx
        .iter()
        .position(|e| matches!(e, Effect::Emit(Event::Dose { record, .. }) if record.outcome == Outcome::Dispensing));
    let turn = fx.iter().position(|e| matches!(e, Effect::Turn { .. }));
    assert!(intent.is_some() && intent < turn, "{fx:?}");
    assert_eq!(turns(&fx), vec![(0, 1, true)]);
    let fx = d.on_drop(Turned::Done(report(1, true)), now(at("08:00"), 3601));
    assert_eq!(doses(&fx), vec![(Outcome::Dispensed, None)]);
    // Dispensed doses light up and sound.
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Lights { led: true, .. })));
}

#[test]
fn an_intent_that_cannot_be_made_durable_fails_and_nothing_moves() {
    let mut d = started();
    d.on_tick(now(at("08:00"), 3600));
    let fx = d.on_drop(Turned::NotDurable, now(at("08:00"), 3601));
    assert_eq!(
        doses(&fx),
        vec![(Outcome::Failed, Some("NOT_DURABLE".into()))]
    );
    assert!(turns(&fx).is_empty(), "not retried at once: {fx:?}");
}

#[test]
fn a_failed_dispense_is_tried_again_after_a_pause_not_every_minute() {
    let mut d = started();
    let fx = run(&mut d, at("08:00"), 3600, 30, || {
        Turned::Done(Err(CarouselError::Jammed { steps: 40 }))
    });
    // 08:00 fails, 08:10 is the next try, 08:20 the next, 08:30 the last in the window.
    let tries = turns(&fx).len();
    assert!((3..=4).contains(&tries), "{tries} tries: {fx:?}");
}

#[test]
fn an_uncertain_dispense_is_never_retried_and_sounds_until_reconciled() {
    let mut d = started();
    let fx = run(&mut d, at("08:00"), 3600, 120, || {
        Turned::Done(report(0, false))
    });
    assert_eq!(turns(&fx).len(), 1, "{fx:?}");
    assert!(doses(&fx).contains(&(Outcome::Uncertain, None)));
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Lights { buzzer: true, .. })));
}

#[test]
fn a_failed_homing_fails_the_dose_before_motion_as_not_homed() {
    let mut d = started();
    d.on_tick(now(at("08:00"), 3600));
    d.on_drop(Turned::Done(report(1, false)), now(at("08:00"), 3601));
    // Not home after that dispense: the next dose homes first.
    let t = now(at("08:00"), 3602);
    let fx = d.on_command(prn(), Some(7), t);
    assert!(matches!(fx.last(), Some(Effect::Home)), "{fx:?}");
    let fx = d.on_homed(Err(CarouselError::Jammed { steps: 9 }), t);
    assert!(doses(&fx).contains(&(Outcome::Failed, Some("NOT_HOMED".into()))));
    let answers = replies(&fx);
    assert!(
        matches!(
            answers.as_slice(),
            [Err(Refusal {
                code: RefusalCode::Failed,
                ..
            })]
        ),
        "{answers:?}"
    );
}

#[test]
fn a_prn_request_is_answered_when_its_dispense_ends() {
    let mut d = started();
    let t = now(at("10:00"), 3 * 3600);
    let fx = d.on_command(prn(), Some(7), t);
    assert!(
        replies(&fx).is_empty(),
        "answered before the dispense: {fx:?}"
    );
    assert_eq!(turns(&fx), vec![(4, 2, true)]);
    // Meanwhile another request is told the carousel is busy.
    let busy = d.on_command(prn(), Some(8), t);
    assert!(matches!(
        replies(&busy).as_slice(),
        [Err(Refusal {
            code: RefusalCode::Dispensing,
            ..
        })]
    ));
    let fx = d.on_drop(Turned::Done(report(2, true)), t);
    assert!(matches!(replies(&fx).as_slice(), [Ok(_)]), "{fx:?}");
    // And the interval holds afterwards, with the engine's code.
    let fx = d.on_command(prn(), Some(9), now(at("11:00"), 4 * 3600));
    assert!(matches!(
        replies(&fx).as_slice(),
        [Err(Refusal {
            code: RefusalCode::Dose(engine::Reason::PrnTooSoon),
            ..
        })]
    ));
}

#[test]
fn a_wall_clock_step_locks_dispensing_until_a_person_trusts_it() {
    let mut d = started();
    // The wall clock jumps 2 h ahead of the monotonic clock at 07:30.
    let fx = d.on_tick(now(at("09:30"), 1800));
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Emit(Event::ClockTrust { trusted: false, .. }))));
    assert!(!d.clock_trusted());
    assert!(
        turns(&fx).is_empty(),
        "dispensed on a stepped clock: {fx:?}"
    );
    let fx = d.on_command(prn(), Some(2), now(at("09:31"), 1860));
    assert!(matches!(
        replies(&fx).as_slice(),
        [Err(Refusal {
            code: RefusalCode::Dose(engine::Reason::ClockUntrusted),
            ..
        })]
    ));
    // A clock that drifts back into line is still not trusted: only a person lifts the lock.
    d.on_tick(now(at("07:33"), 1980));
    assert!(!d.clock_trusted());
    let trust = Command::TrustClock {
        actor: "nurse-4".into(),
        comment: "checked against the phone".into(),
    };
    let fx = d.on_command(trust, Some(3), now(at("07:34"), 2040));
    assert!(matches!(replies(&fx).as_slice(), [Ok(_)]));
    assert!(d.clock_trusted());
}

#[test]
fn a_restart_behind_the_time_floor_stays_locked_until_trusted() {
    let restored = Restored {
        clock_floor: Some(at("12:00")),
        ..restored("00:00")
    };
    // A Pi without a real-time clock boots at 08:00 though the last record says 12:00.
    let t0 = now(at("08:00"), 0);
    let mut d = Dispenser::on_restart(restored, GEOMETRY, t0);
    assert!(!d.clock_trusted());
    let fx = d.start(t0);
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Emit(Event::ClockTrust { trusted: false, .. }))));
    d.on_homed(Ok(1), t0);
    let fx = run(&mut d, at("08:00"), 0, 60, || Turned::Done(report(1, true)));
    assert!(turns(&fx).is_empty(), "{fx:?}");
}

#[test]
fn reconciled_units_cannot_exceed_what_the_dispense_released() {
    let mut d = started();
    d.on_tick(now(at("08:00"), 3600));
    d.on_drop(Turned::Done(report(0, true)), now(at("08:00"), 3601));
    let reconcile = |units| Command::Reconcile {
        patient: "p-1".into(),
        medication: "METFORMIN".into(),
        occurrence: Some(at("08:00")),
        given: true,
        units: Some(units),
        actor: "nurse-4".into(),
        note: "found it in the cup".into(),
    };
    let fx = d.on_command(reconcile(4_000_000_000), Some(1), now(at("08:05"), 3900));
    assert!(matches!(
        replies(&fx).as_slice(),
        [Err(Refusal {
            code: RefusalCode::OutOfRange,
            ..
        })]
    ));
    let fx = d.on_command(reconcile(1), Some(2), now(at("08:06"), 3960));
    assert!(matches!(replies(&fx).as_slice(), [Ok(_)]), "{fx:?}");
    // The person is the actor of the row.
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Emit(Event::Dose { actor: Some(a), record, .. })
            if a == "nurse-4" && record.outcome == Outcome::ConfirmedGiven
    )));
}

#[test]
fn a_pickup_takes_every_dose_waiting_in_the_cup() {
    let mut d = started();
    let t = now(at("08:00"), 3600);
    d.on_tray(true, t);
    d.on_tick(t);
    d.on_drop(Turned::Done(report(1, true)), t);
    let fx = d.on_tray(true, now(at("08:01"), 3660));
    assert!(doses(&fx).is_empty());
    let fx = d.on_tray(false, now(at("08:02"), 3720));
    assert_eq!(doses(&fx), vec![(Outcome::Taken, None)]);
    // A second lift takes nothing more.
    d.on_tray(true, now(at("08:03"), 3780));
    let fx = d.on_tray(false, now(at("08:04"), 3840));
    assert!(doses(&fx).is_empty());
}

#[test]
fn an_empty_slot_fails_before_motion_and_waits_for_the_next_refill() {
    let mut d = started();
    // Take the slot down to nothing.
    d.on_command(
        Command::Refill {
            slot: 1,
            added: 1,
            expiry: None,
            actor: "p".into(),
            note: String::new(),
        },
        None,
        now(at("07:00"), 0),
    );
    let schedule = SCHEDULE.replace("slot = 0", "slot = 1");
    let replace = Command::ReplaceSchedule {
        patient: "p-1".into(),
        source: schedule.replace("units = 1", "units = 2"),
        actor: "nurse-4".into(),
        confirm: None,
    };
    let fx = d.on_command(replace, Some(1), now(at("07:01"), 60));
    assert!(matches!(replies(&fx).as_slice(), [Ok(_)]), "{fx:?}");
    let fx = run(&mut d, at("08:00"), 3600, 60, || {
        Turned::Done(report(2, true))
    });
    assert!(turns(&fx).is_empty(), "{fx:?}");
    let failed: Vec<_> = doses(&fx)
        .into_iter()
        .filter(|(o, _)| *o == Outcome::Failed)
        .collect();
    assert_eq!(failed, vec![(Outcome::Failed, Some("SLOT_EMPTY".into()))]);
    // A refill lets it go at the next round.
    d.on_command(refill(1, 10), None, now(at("09:01"), 7260));
    let fx = run(&mut d, at("09:02"), 7320, 2, || {
        Turned::Done(report(2, true))
    });
    assert_eq!(turns(&fx).len(), 1, "{fx:?}");
}

#[test]
fn while_storage_fails_nothing_is_dispensed_and_commands_say_storage_failed() {
    let mut d = started();
    d.on_command(Command::StorageLock(true), None, now(at("07:59"), 3540));
    let fx = run(&mut d, at("08:00"), 3600, 10, || {
        Turned::Done(report(1, true))
    });
    assert!(turns(&fx).is_empty());
    let fx = d.on_command(prn(), Some(1), now(at("08:11"), 4260));
    assert!(matches!(
        replies(&fx).as_slice(),
        [Err(Refusal {
            code: RefusalCode::StorageFailed,
            ..
        })]
    ));
}

#[test]
fn commands_are_refused_with_a_typed_code_and_change_nothing() {
    let mut d = started();
    let t = now(at("07:10"), 600);
    let skip = |patient: &str, medication: &str, o| Command::Skip {
        patient: patient.into(),
        medication: medication.into(),
        occurrence: o,
        actor: "nurse-4".into(),
    };
    let code = |fx: &[Effect]| match replies(fx).as_slice() {
        [Err(r)] => Some(r.code),
        _ => None,
    };
    let before = d.history().iter().count();
    assert_eq!(
        code(&d.on_command(skip("p-9", "Metformin", at("08:00")), Some(1), t)),
        Some(RefusalCode::UnknownPatient)
    );
    assert_eq!(
        code(&d.on_command(skip("p-1", "Aspirin", at("08:00")), Some(1), t)),
        Some(RefusalCode::UnknownMedication)
    );
    assert_eq!(
        code(&d.on_command(skip("p-1", "metformin", at("08:30")), Some(1), t)),
        Some(RefusalCode::UnknownOccurrence)
    );
    assert_eq!(
        code(&d.on_command(refill(9, 1), Some(1), t)),
        Some(RefusalCode::UnknownSlot)
    );
    assert_eq!(
        code(&d.on_command(refill(0, 250), Some(1), t)),
        Some(RefusalCode::OutOfRange)
    );
    assert_eq!(d.history().iter().count(), before);
    // And a skip in any letter case settles the dose: it is not dispensed.
    let fx = d.on_command(skip("p-1", "METFORMIN", at("08:00")), Some(1), t);
    assert!(matches!(replies(&fx).as_slice(), [Ok(_)]));
    let fx = run(&mut d, at("08:00"), 3600, 30, || {
        Turned::Done(report(1, true))
    });
    assert!(turns(&fx).is_empty(), "{fx:?}");
}

#[test]
fn a_command_answer_comes_before_the_turn_it_sets_off() {
    let mut d = started();
    // Held at 08:00 for lack of a reading would need a hold; use a reading that releases
    // nothing but re-plans: the answer must precede any turn in the batch.
    let t = now(at("08:00"), 3600);
    let fx = d.on_command(
        Command::Report {
            days: 1,
            actor: "nurse-4".into(),
        },
        Some(1),
        t,
    );
    assert!(turns(&fx).is_empty());
    let reading = VitalReading {
        vital: crate::dosing::schedule::Vital::HeartRate,
        value: 70.0,
        at: at("08:00"),
        quality: crate::dosing::engine::Quality::Good,
        source: "monitor".into(),
        patient: None,
    };
    let fx = d.on_command(Command::Vital(reading), Some(2), t);
    let reply = fx.iter().position(|e| matches!(e, Effect::Reply { .. }));
    let turn = fx.iter().position(|e| matches!(e, Effect::Turn { .. }));
    assert!(reply.is_some(), "{fx:?}");
    assert!(turn.is_none_or(|t| reply < Some(t)), "{fx:?}");
}

#[test]
fn a_dispense_is_dispensed_only_with_every_drop_seen_and_home_reached() {
    let two = |seen, home| {
        Ok(DropReport {
            requested: 2,
            ..report(seen, home).unwrap_or_else(|e| panic!("{e}"))
        })
    };
    assert_eq!(classify(&two(2, true), 2).outcome, Outcome::Dispensed);
    assert_eq!(classify(&two(1, true), 2).outcome, Outcome::Uncertain);
    assert_eq!(classify(&two(2, false), 2).outcome, Outcome::Uncertain);
}

#[test]
fn a_unit_that_fell_while_positioning_makes_the_dose_uncertain_and_names_the_slot() {
    let stray = report(2, true).map(|r| DropReport {
        stray_drops: 1,
        stray_from: Some(3),
        ..r
    });
    let c = classify(&stray, 2);
    assert_eq!(c.outcome, Outcome::Uncertain);
    assert_eq!(c.given, 2);
    assert!(c.detail.contains("over slot 3"), "{}", c.detail);
}

#[test]
fn errors_before_the_motor_moves_are_failed_never_uncertain() {
    for e in [
        CarouselError::NoSuchSlot { slot: 9, slots: 8 },
        CarouselError::NotHomed,
        CarouselError::BeamBlocked,
        CarouselError::Jammed { steps: 40 },
    ] {
        let c = classify(&Err(e), 1);
        assert_eq!((c.outcome, c.given), (Outcome::Failed, 0), "{c:?}");
    }
    // A sensor failing mid-turn may have let something fall: uncertain.
    let mid = CarouselError::Sensor {
        line: "beam",
        reason: "i/o".into(),
    };
    assert_eq!(classify(&Err(mid), 1).outcome, Outcome::Uncertain);
}

#[test]
fn a_command_right_after_a_clock_step_is_decided_on_the_untrusted_clock() {
    let mut d = started();
    d.on_tick(now(at("10:00"), 3 * 3600));
    // Seconds later the wall clock is an hour ahead; no planning round has run since.
    let fx = d.on_command(prn(), Some(1), now(at("11:00"), 3 * 3600 + 5));
    assert!(turns(&fx).is_empty(), "{fx:?}");
    assert!(matches!(
        replies(&fx).as_slice(),
        [Err(Refusal {
            code: RefusalCode::Dose(engine::Reason::ClockUntrusted),
            ..
        })]
    ));
}

#[test]
fn a_reconciled_dose_keeps_the_release_place_on_both_timelines() {
    let mut d = started();
    d.on_tick(now(at("08:00"), 3600));
    d.on_drop(Turned::Done(report(0, true)), now(at("08:00"), 3600));
    let fx = d.on_command(
        Command::Reconcile {
            patient: "p-1".into(),
            medication: "Metformin".into(),
            occurrence: Some(at("08:00")),
            given: true,
            units: None,
            actor: "nurse-4".into(),
            note: "in the cup".into(),
        },
        Some(1),
        now(at("10:30"), 3 * 3600 + 1800),
    );
    let given = fx.iter().find_map(|e| match e {
        Effect::Emit(Event::Dose { record, .. }) if record.outcome == Outcome::ConfirmedGiven => {
            Some(record.clone())
        }
        _ => None,
    });
    let given = given.unwrap_or_else(|| panic!("not reconciled: {fx:?}"));
    // Both when it was released, never today's elapsed time beside the release's wall time (a
    // restart resumes the timeline from such a pair).
    assert_eq!(given.at, at("08:00"));
    assert_eq!(given.elapsed, Some(at("08:00")));
}

#[test]
fn a_broken_audit_chain_dispenses_nothing_until_a_pharmacist_acknowledges_it() {
    let restored = Restored {
        integrity: Some(IntegrityBreak {
            seq: 41,
            detail: "row 41: changed".into(),
        }),
        ..restored("07:00")
    };
    let t0 = now(at("07:00"), 0);
    let mut d = Dispenser::on_restart(restored, GEOMETRY, t0);
    let fx = d.start(t0);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Emit(Event::Integrity {
            acknowledged: false,
            seq: 41,
            ..
        })
    )));
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Lights { buzzer: true, .. })));
    d.on_homed(Ok(1), t0);
    let fx = run(&mut d, at("08:00"), 3600, 20, || {
        Turned::Done(report(1, true))
    });
    assert!(turns(&fx).is_empty(), "{fx:?}");
    let alerts = fx
        .iter()
        .filter(|e| matches!(e, Effect::Emit(Event::DoseAlert { reason, .. }) if reason == "INTEGRITY_BROKEN"))
        .count();
    assert_eq!(alerts, 1, "told once per dose: {fx:?}");
    let fx = d.on_command(prn(), Some(1), now(at("08:21"), 4860));
    assert!(matches!(
        replies(&fx).as_slice(),
        [Err(Refusal {
            code: RefusalCode::IntegrityBroken,
            ..
        })]
    ));
    let ack = Command::AcknowledgeIntegrity {
        actor: "ph-7".into(),
        comment: "compared with the pharmacy's copy".into(),
    };
    let fx = d.on_command(ack, Some(2), now(at("08:22"), 4920));
    assert!(matches!(replies(&fx).as_slice(), [Ok(_)]), "{fx:?}");
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Emit(Event::Integrity {
            acknowledged: true,
            actor: Some(a),
            ..
        }) if a == "ph-7"
    )));
    // The waiting dose goes at once; a second acknowledgement has nothing to acknowledge.
    assert_eq!(turns(&fx).len(), 1, "{fx:?}");
    d.on_drop(Turned::Done(report(1, true)), now(at("08:22"), 4920));
    let again = Command::AcknowledgeIntegrity {
        actor: "ph-7".into(),
        comment: "again".into(),
    };
    let fx = d.on_command(again, Some(3), now(at("08:23"), 4980));
    assert!(matches!(
        replies(&fx).as_slice(),
        [Err(Refusal {
            code: RefusalCode::NotRaised,
            ..
        })]
    ));
}

/// A paracetamol dose six days and two hours before 07:00, as the store holds it.
fn six_days_ago() -> DoseHistory {
    let given_at = at("05:00") - chrono::Duration::days(6);
    let given = DoseRecord {
        medication: "Paracetamol".into(),
        occurrence: None,
        at: given_at,
        units: 2,
        outcome: Outcome::Dispensed,
        slot: Some(4),
        elapsed: Some(given_at),
    };
    [("p-1".to_string(), given)].into_iter().collect()
}

/// A dispenser restarted at 07:00 on `stored` that keeps records only as long as a rule
/// reaches them, homed and stocked, after its first round let the six-day-old record go.
fn forgetful(stored: &DoseHistory) -> Dispenser {
    let t0 = now(at("07:00"), 0);
    let mut d = Dispenser::on_restart(
        Restored {
            history: stored.clone(),
            keep_history: Some(chrono::Duration::zero()),
            ..restored("00:00")
        },
        GEOMETRY,
        t0,
    );
    d.start(t0);
    d.on_homed(Ok(12), t0);
    d.on_command(refill(4, 30), Some(1), t0);
    d.on_tick(t0);
    assert_eq!(d.history().of("p-1").len(), 0, "no rule reaches it");
    assert!(d.history().forgot_any());
    d
}

/// The wall clock set back six days at 07:01 and a person confirming it: the new time, and
/// the effects of both.
fn set_back(d: &mut Dispenser) -> (DateTime<Utc>, Vec<Effect>) {
    let back = at("07:01") - chrono::Duration::days(6);
    let mut fx = d.on_tick(now(back, 60));
    let trust = Command::TrustClock {
        actor: "nurse-4".into(),
        comment: "the date was wrong".into(),
    };
    let trusted = d.on_command(trust, Some(2), now(back, 61));
    assert!(
        matches!(replies(&trusted).as_slice(), [Ok(_)]),
        "{trusted:?}"
    );
    fx.extend(trusted);
    (back, fx)
}

/// Records let go from memory are read back from the store before any decision that reaches
/// them: after a person sets the clock back six days, an as-needed dose given two hours
/// before the new time (six days ago on the old clock, long let go) must refuse the next one.
/// Until the records come, the request is answered BUSY and the planning round waits.
#[test]
fn a_decision_that_reaches_records_let_go_waits_for_the_store_and_refuses_nothing_wrongly() {
    let stored = six_days_ago();
    let mut d = forgetful(&stored);
    let (back, mut asked) = set_back(&mut d);
    // The request reaches back past what memory holds: BUSY, and the store is asked once.
    let fx = d.on_command(prn(), Some(3), now(back, 62));
    assert!(
        matches!(
            replies(&fx).as_slice(),
            [Err(Refusal {
                code: RefusalCode::Busy,
                ..
            })]
        ),
        "{fx:?}"
    );
    assert!(turns(&fx).is_empty());
    asked.extend(fx);
    let load = |fx: &[Effect]| {
        fx.iter()
            .filter(|e| matches!(e, Effect::LoadHistory))
            .count()
    };
    assert_eq!(load(&asked), 1, "{asked:?}");
    let fx = d.on_tick(now(back, 63));
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::LoadHistory)),
        "asked once: {fx:?}"
    );
    assert!(turns(&fx).is_empty());
    // The store's records come back; the dose two hours ago now counts.
    let fx = d.on_command(
        Command::HistoryLoaded(Box::new(stored)),
        None,
        now(back, 64),
    );
    assert!(
        !fx.iter()
            .any(|e| matches!(e, Effect::Emit(Event::DeviceFault { .. }))),
        "{fx:?}"
    );
    assert_eq!(d.history().of("p-1").len(), 1);
    let fx = d.on_command(prn(), Some(4), now(back, 65));
    assert!(
        matches!(
            replies(&fx).as_slice(),
            [Err(Refusal {
                code: RefusalCode::Dose(engine::Reason::PrnTooSoon),
                ..
            })]
        ),
        "{fx:?}"
    );
    assert!(turns(&fx).is_empty());
}

/// Records from the store that do not continue the ones in memory (a database changed behind
/// the appliance's back) are not used: a fault is told and the decision stays refused.
#[test]
fn a_store_that_does_not_line_up_with_memory_is_not_used_and_the_fault_is_told() {
    let mut d = forgetful(&six_days_ago());
    let (back, mut asked) = set_back(&mut d);
    asked.extend(d.on_command(prn(), Some(3), now(back, 62)));
    assert!(asked.iter().any(|e| matches!(e, Effect::LoadHistory)));
    // Nothing stored: the forgotten record cannot come back.
    let fx = d.on_command(Command::HistoryLoaded(Box::default()), None, now(back, 63));
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Emit(Event::DeviceFault { device, .. }) if device == "dose history")),
        "{fx:?}"
    );
    let fx = d.on_command(prn(), Some(4), now(back, 64));
    assert!(matches!(
        replies(&fx).as_slice(),
        [Err(Refusal {
            code: RefusalCode::Busy,
            ..
        })]
    ));
    assert!(turns(&fx).is_empty());
    // It is not asked for again and again: a restart reads the store whole.
    let fx = d.on_tick(now(back, 200));
    assert!(!fx.iter().any(|e| matches!(e, Effect::LoadHistory)));
}

/// Windows with every kind of edge: two doses a day under a daily maximum, one held on a
/// reading, a weekly high-alert dose with a long late window, one every eight hours.
const EDGES: &str = r#"
[patient]
id = "p-1"
timezone = "Europe/Berlin"
quiet_hours = "22:00-07:00"

[[medication]]
name = "Metformin"
slot = 0
units = 1
times = ["08:07", "19:53"]
max_daily_units = 2

[[medication]]
name = "Metoprolol"
slot = 1
units = 1
times = ["08:11"]
early = "22m"

[[medication.hold]]
vital = "heart_rate"
below = 55
max_age = "2h"

[[medication]]
name = "Methotrexate"
slot = 2
units = 4
times = ["09:13"]
days = ["mon"]
high_alert_weekly = true
late = "12h"

[[medication]]
name = "Amoxicillin"
slot = 3
units = 1
every = "8h"
first = "2026-03-23T06:29"
missed_policy = "window"
"#;

/// What happens to a dispenser from outside, at a wall-clock instant.
enum Input {
    /// The cup is lifted (and put back a minute later).
    Lift,
    Command(Command),
}

/// Two weeks of inputs: readings most mornings (some low, some missing), the cup lifted at
/// fixed hours on most days and left for hours on others, slot 3 left to run empty and
/// refilled days later, and a caregiver reconciling a dispense that went uncertain.
fn two_weeks_of_inputs(t0: DateTime<Utc>) -> Vec<(DateTime<Utc>, Input)> {
    let mut out = Vec::new();
    for day in 0..14i64 {
        let midnight = t0 + chrono::Duration::days(day);
        // Seconds past the minute: an input's round is its own, not the next minute's.
        let h = |hh: i64, mm: i64| {
            midnight + chrono::Duration::minutes(hh * 60 + mm) + chrono::Duration::seconds(17)
        };
        if day % 3 != 2 {
            let value = if day % 4 == 1 { 50.0 } else { 70.0 };
            let reading = VitalReading {
                vital: crate::dosing::schedule::Vital::HeartRate,
                value,
                at: h(6, 40),
                quality: crate::dosing::engine::Quality::Good,
                source: "monitor".into(),
                patient: None,
            };
            out.push((h(6, 45), Input::Command(Command::Vital(reading))));
        }
        if day % 5 != 4 {
            for (hh, mm) in [(6, 50), (7, 20), (14, 35), (18, 5), (22, 40)] {
                out.push((h(hh, mm), Input::Lift));
            }
        }
        if day == 8 {
            // While the 13:29 dose's window is open and the dose waits for stock.
            out.push((h(13, 35), Input::Command(refill(3, 30))));
        }
        if day == 3 {
            out.push((
                h(9, 0),
                Input::Command(Command::Reconcile {
                    patient: "p-1".into(),
                    medication: "metformin".into(),
                    occurrence: Some(midnight + chrono::Duration::minutes(7 * 60 + 7)),
                    given: false,
                    units: None,
                    actor: "nurse-4".into(),
                    note: "the cup was empty".into(),
                }),
            ));
        }
    }
    out.sort_by_key(|(t, _)| *t);
    out
}

/// A dispenser on [`EDGES`] at `t0` (mono 0), homed, slot 3 stocked for a few days only.
fn on_edges(t0: DateTime<Utc>) -> Dispenser {
    let schedule =
        Schedule::parse(EDGES, Path::new("edges.toml")).unwrap_or_else(|e| panic!("{e:?}"));
    let restored = Restored {
        schedules: vec![schedule],
        since: Some(t0),
        ..Restored::default()
    };
    let start = now(t0, 0);
    let mut d = Dispenser::on_restart(restored, GEOMETRY, start);
    d.start(start);
    d.on_homed(Ok(12), start);
    for (slot, units) in [(0, 200), (1, 200), (2, 200), (3, 12)] {
        d.on_command(refill(slot, units), None, start);
    }
    d.on_tray(true, start);
    d.on_button(false, start);
    d
}

/// What a life has seen so far.
#[derive(Default)]
struct Seen {
    /// Every event but stock warnings, whose cadence is not a dose decision.
    log: Vec<Event>,
    turns: u32,
}

/// Carries out `fx` at `t` as the controller would. Turns are answered with every unit seen,
/// except the first Metformin dose of the fourth day (its units are not seen: uncertain) and
/// the twentieth turn (the chute is blocked before anything moves: failed, tried again).
fn carry(d: &mut Dispenser, mut fx: Vec<Effect>, t: Instant, t0: DateTime<Utc>, seen: &mut Seen) {
    let uncertain_from = t0 + chrono::Duration::days(3) + chrono::Duration::hours(6);
    while let Some(i) = fx
        .iter()
        .position(|e| matches!(e, Effect::Turn { .. } | Effect::Home))
    {
        let rest = fx.split_off(i + 1);
        let next = match fx.last() {
            Some(Effect::Turn { slot, units, .. }) => {
                seen.turns += 1;
                let lost = *slot == 0
                    && t.wall >= uncertain_from
                    && t.wall < uncertain_from + chrono::Duration::hours(2);
                Some(Turned::Done(if seen.turns == 20 {
                    Err(CarouselError::BeamBlocked)
                } else {
                    Ok(DropReport {
                        slot: *slot,
                        requested: *units,
                        drops_seen: if lost { 0 } else { *units },
                        stray_drops: 0,
                        stray_from: None,
                        returned_home: true,
                    })
                }))
            }
            _ => None,
        };
        keep(&fx, &mut seen.log);
        fx = match next {
            Some(turned) => d.on_drop(turned, t),
            None => d.on_homed(Ok(5), t),
        };
        fx.extend(rest);
    }
    keep(&fx, &mut seen.log);
}

fn keep(fx: &[Effect], log: &mut Vec<Event>) {
    log.extend(fx.iter().filter_map(|e| match e {
        Effect::Emit(Event::StockAlert { .. }) => None,
        Effect::Emit(e) => Some(e.clone()),
        _ => None,
    }));
}

/// How a dispenser is driven between inputs.
#[derive(Clone, Copy)]
enum Drive {
    /// Ticked when it asks ([`Dispenser::next_wake`]), as the controller does.
    WhenAsked,
    /// A planning round forced every minute, as the planner ran before it woke on edges.
    EveryMinute,
}

/// Lives two weeks of [`two_weeks_of_inputs`], driven by `drive` (and ticked at each input).
fn live(drive: Drive) -> Vec<Event> {
    let t0 = at("00:00");
    let end = t0 + chrono::Duration::days(14);
    let inputs = two_weeks_of_inputs(t0);
    let mut d = on_edges(t0);
    let instant = |wall: DateTime<Utc>| Instant {
        wall,
        mono: (wall - t0).to_std().unwrap_or_default(),
    };
    let mut seen = Seen::default();
    let mut t = instant(t0);
    let mut i = 0;
    while t.wall < end {
        while let Some((when, input)) = inputs.get(i).filter(|(w, _)| *w <= t.wall) {
            let at = instant(*when);
            let fx = match input {
                Input::Lift => {
                    let fx = d.on_tray(false, at);
                    carry(&mut d, fx, at, t0, &mut seen);
                    d.on_tray(true, instant(*when + chrono::Duration::seconds(30)))
                }
                Input::Command(c) => d.on_command(c.clone(), None, at),
            };
            carry(&mut d, fx, at, t0, &mut seen);
            let fx = d.on_tick(at);
            carry(&mut d, fx, at, t0, &mut seen);
            i += 1;
        }
        if let Drive::EveryMinute = drive {
            d.replan(t);
        }
        let fx = d.on_tick(t);
        carry(&mut d, fx, t, t0, &mut seen);
        let wake = match drive {
            Drive::WhenAsked => d.next_wake(t),
            Drive::EveryMinute => Duration::from_secs((t.mono.as_secs() / 60 + 1) * 60),
        };
        let input_at = inputs.get(i).map(|(w, _)| instant(*w).mono);
        let mono = input_at.map_or(wake, |a| a.min(wake));
        t = instant(t0 + chrono::Duration::from_std(mono).unwrap_or_default());
    }
    seen.log
}

#[test]
fn a_dispenser_woken_only_when_it_asks_decides_exactly_as_one_planning_every_minute() {
    let every_minute = live(Drive::EveryMinute);
    let when_asked = live(Drive::WhenAsked);
    let doses = |log: &[Event]| {
        log.iter()
            .filter(|e| matches!(e, Event::Dose { .. }))
            .count()
    };
    // The two weeks hold what the comparison is about: doses given, held, missed, uncertain.
    let outcomes: Vec<Outcome> = every_minute
        .iter()
        .filter_map(|e| match e {
            Event::Dose { record, .. } => Some(record.outcome),
            _ => None,
        })
        .collect();
    for o in [
        Outcome::Dispensed,
        Outcome::Taken,
        Outcome::Held,
        Outcome::Missed,
        Outcome::Uncertain,
        Outcome::Failed,
    ] {
        assert!(outcomes.contains(&o), "no {o:?} in {outcomes:?}");
    }
    assert!(doses(&every_minute) > 80, "{}", doses(&every_minute));
    // Reminders of a dose in the cup follow it a minute at a time from when it dropped, not
    // from the minute's start: never later than planning every minute, and less than a minute
    // sooner. Everything else is the same to the second.
    for (a, b) in every_minute.iter().zip(&when_asked) {
        match (a, b) {
            (Event::DoseAlert { at: late, .. }, Event::DoseAlert { at: soon, .. }) => {
                assert!(
                    soon <= late && *late - *soon < chrono::Duration::minutes(1),
                    "{a:?}\n{b:?}"
                );
                let mut b = b.clone();
                if let Event::DoseAlert { at, .. } = &mut b {
                    *at = *late;
                }
                assert_eq!(*a, b);
            }
            _ => assert_eq!(a, b),
        }
    }
    assert_eq!(every_minute.len(), when_asked.len());
}

/// A wall clock corrected by less than the trust tolerance moves every window edge against the
/// monotonic clock: a round timed on the old offset is brought forward, not left late.
#[test]
fn a_small_clock_correction_brings_a_round_timed_on_the_old_offset_forward() {
    const NINE: &str = r#"
[patient]
id = "p-1"
timezone = "UTC"

[[medication]]
name = "Metformin"
slot = 0
units = 1
times = ["09:00"]
early = "10m"
"#;
    let schedule =
        Schedule::parse(NINE, Path::new("nine.toml")).unwrap_or_else(|e| panic!("{e:?}"));
    let restored = Restored {
        schedules: vec![schedule],
        since: Some(at("07:00")),
        ..Restored::default()
    };
    let t0 = now(at("07:00"), 0);
    let mut d = Dispenser::on_restart(restored, GEOMETRY, t0);
    d.start(t0);
    d.on_homed(Ok(12), t0);
    d.on_command(refill(0, 30), None, t0);
    // Ticked when it asks until 08:49:30: the round is timed for 08:50, when the window opens.
    let mut t = t0;
    while t.wall < at("08:49") + chrono::Duration::seconds(30) {
        assert!(turns(&d.on_tick(t)).is_empty());
        let mono = d.next_wake(t);
        let ahead = chrono::Duration::from_std(mono - t.mono).unwrap_or_default();
        t = Instant {
            wall: t.wall + ahead,
            mono,
        };
    }
    assert_eq!(d.next_plan, Duration::from_secs(110 * 60));
    // NTP sets the clock 45 s ahead, within the tolerance (still trusted); at the next poll,
    // 5 s on, the window is open by the clock.
    let stepped = Instant {
        wall: t.wall + chrono::Duration::seconds(50),
        mono: t.mono + Duration::from_secs(5),
    };
    let fx = d.on_tick(stepped);
    assert!(d.clock_trusted());
    assert_eq!(turns(&fx), vec![(0, 1, true)]);
}

/// A daily summary that waits for records being read back keeps its passed due time; the next
/// round is still timed ahead of now, or the task would wake at once, again and again.
#[test]
fn a_summary_held_back_past_its_time_does_not_make_the_dispenser_spin() {
    let mut d = started();
    let t = now(at("09:00"), 7200);
    d.next_summary = Duration::ZERO;
    assert_eq!(d.after_round(t), t.mono + PLAN_EVERY);
    // Due later: at its time.
    d.next_summary = t.mono + Duration::from_secs(300);
    assert_eq!(d.after_round(t), t.mono + Duration::from_secs(300));
}
