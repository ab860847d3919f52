//! The whole appliance (controller, drivers, simulated board) on simulated time.

mod common;

use medbox::scenario::Scenario;
use std::path::Path;

#[test]
fn two_days_pull_down_then_hold_the_buffered_probe_in_range() {
    let s = common::run_days(2.0, None);
    let f = &s.fridge;
    // One record a minute, every one of them valid.
    assert!((2880..=2881).contains(&f.vial.readings), "{f:?}");
    assert_eq!(f.vial.rejected, 0);
    // Switched on at room temperature: the only time out of range is the first pull-down.
    assert!(f.minutes_out_of_range < 180.0, "{f:?}");
    assert!(f.minutes_in_range > 2700.0, "{f:?}");
    let mean = f.vial.mean.unwrap();
    assert!((4.0..=6.5).contains(&mean), "mean {mean}");
    // The thermostat cycles, and its protections keep the rate sane.
    assert!(f.compressor_starts >= 10, "{f:?}");
    assert!(f.compressor_starts_per_hour <= 6.0, "{f:?}");
    // The records come from the model through the drivers: they match its truth.
    assert!((f.vial.min.unwrap() - s.truth.vial_min).abs() < 0.1);
    assert!((f.vial.max.unwrap() - s.truth.vial_max).abs() < 0.1);
    assert!((f.air.min.unwrap() - s.truth.air_min).abs() < 0.3);
    assert_eq!(s.dispenser.homings, 1, "the carousel homes at start");
}

#[test]
fn a_door_left_open_for_an_hour_visibly_warms_the_fridge() {
    let base = common::run_days(1.5, None);
    let open = common::run_days(1.5, Some("door-left-open.toml"));
    assert!((open.fridge.door_open_minutes - 60.0).abs() <= 1.0);
    assert!(open.fridge.air.max.unwrap() > 9.0 || open.truth.air_max > 9.0);
    assert!(
        open.fridge.minutes_out_of_range > base.fridge.minutes_out_of_range + 30.0,
        "door open: {} min out of range, closed: {}",
        open.fridge.minutes_out_of_range,
        base.fridge.minutes_out_of_range
    );
}

#[test]
fn both_probes_failed_runs_the_failsafe_duty_cycle_and_reports_faults() {
    let s = common::run_days(1.0, Some("both-probes-failed.toml"));
    assert!(
        (s.fridge.failsafe_minutes - 240.0).abs() <= 11.0,
        "{:?}",
        s.fridge
    );
    assert_eq!(s.probe_faults.get("vial:NOT_RESPONDING"), Some(&1));
    assert_eq!(s.probe_faults.get("air:BUS_ERROR"), Some(&1));
    // Rejected readings are never counted as temperatures.
    assert_eq!(s.fridge.vial.rejected, 240);
    // The duty cycle kept the load neither frozen nor warm.
    assert!(s.truth.vial_min > 0.0, "{:?}", s.truth);
}

#[test]
fn a_disconnected_buffered_probe_falls_back_to_the_air_probe() {
    let s = common::run_days(1.0, Some("probe-disconnected.toml"));
    assert_eq!(s.fridge.failsafe_minutes, 0.0);
    assert_eq!(s.probe_faults.get("vial:NOT_RESPONDING"), Some(&1));
    assert_eq!(s.probe_faults.get("air:POWER_ON_VALUE"), Some(&1));
    assert!(s.fridge.vial.rejected >= 180);
}

#[test]
fn dispenser_scenario_counts_what_fell_and_reports_the_jam() {
    let s = common::run_days(0.25, Some("dispenser-faults.toml"));
    let d = &s.dispenser;
    assert_eq!(d.dispenses, 3, "{d:?}");
    assert_eq!(d.units_seen, s.truth.units_released);
    assert_eq!(d.units_seen, 3);
    assert_eq!(d.homings, 2);
    assert_eq!(d.tray_pickups, 1);
    assert_eq!(d.button_presses, 1);
    assert!(
        s.device_faults.iter().any(|f| f.contains("jammed")),
        "{:?}",
        s.device_faults
    );
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let text = include_str!("../hw/scenarios/daily-door-use.toml");
    let sc = || Some(Scenario::parse(text, Path::new("daily-door-use.toml")).unwrap());
    let a = serde_json::to_string(&common::run_with(0.5, sc(), Some(7))).unwrap();
    let b = serde_json::to_string(&common::run_with(0.5, sc(), Some(7))).unwrap();
    assert_eq!(a, b);
    let c = serde_json::to_string(&common::run_with(0.5, sc(), Some(8))).unwrap();
    assert_ne!(a, c, "another seed gives other noise");
}

#[test]
fn every_shipped_scenario_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("hw/scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        n += 1;
    }
    assert!(n >= 6);
}

#[test]
fn coldchain_stats_agrees_with_the_live_controller_on_the_same_readings() {
    for scenario in ["door-left-open.toml", "vial-probe-creeps-up.toml"] {
        stats_agree_with_live(scenario);
    }
}

fn stats_agree_with_live(scenario: &str) {
    let live = common::run_days(2.0, Some(scenario));
    let mut csv = Vec::new();
    medbox::coldchain::readings_csv::write_records(&mut csv, &live.records).unwrap();
    let obs = medbox::coldchain::readings_csv::read_observations(csv.as_slice())
        .unwrap()
        .observations;
    let offline = medbox::coldchain::analysis::analyse(&Default::default(), obs);
    let l = &live.coldchain;
    assert_eq!(offline.excursions.len(), l.excursions.len());
    for (a, b) in offline.excursions.iter().zip(&l.excursions) {
        assert_eq!((a.start, a.end), (b.start, b.end));
        assert!((a.max - b.max).abs() < 1e-3 && (a.mkt - b.mkt).abs() < 1e-3);
    }
    let kinds = |r: &medbox::coldchain::analysis::AnalysisReport| {
        r.alarms.iter().map(|a| (a.alarm, a.at)).collect::<Vec<_>>()
    };
    assert_eq!(kinds(&offline), kinds(l));
    assert!((offline.minutes_in_range - l.minutes_in_range).abs() < 1.0);
    assert!((offline.minutes_uncertain - l.minutes_uncertain).abs() < 1.0);
    assert!((offline.mkt.unwrap() - l.mkt.unwrap()).abs() < 1e-3);
    let expected = match scenario {
        // The door alarm fired five minutes after the door opened, and an excursion followed.
        "door-left-open.toml" => medbox::coldchain::monitor::AlarmKind::DoorOpen,
        _ => {
            assert!(l.minutes_uncertain > 60.0, "{scenario}");
            medbox::coldchain::monitor::AlarmKind::ProbeDisagreement
        }
    };
    assert!(kinds(l).iter().any(|(k, _)| *k == expected), "{scenario}");
}

#[test]
fn an_acknowledged_alarm_is_recorded_with_actor_and_comment() {
    let text = r#"
name = "ack"
[[event]]
at = "6h"
action = "door_open"
for = "20m"
[[event]]
at = "6h 10m"
action = "ack_alarm"
alarm = "DOOR_OPEN"
actor = "nurse-17"
comment = "restocking"
[[event]]
at = "6h 11m"
action = "ack_alarm"
alarm = "HEAT"
actor = "nurse-17"
comment = "nothing to see"
"#;
    let sc = Scenario::parse(text, Path::new("ack.toml")).unwrap();
    let s = common::run_with(0.5, Some(sc), None);
    assert_eq!(
        s.acknowledgements,
        vec!["DOOR_OPEN: nurse-17: restocking".to_string()]
    );
    assert_eq!(
        s.commands_rejected,
        vec!["acknowledge_alarm: NOT_RAISED: alarm HEAT is not raised".to_string()]
    );
}

#[test]
fn a_hot_room_still_stays_in_range_after_pull_down() {
    let s = common::run_days(3.0, Some("hot-room.toml"));
    // Only the initial pull-down from room temperature is an excursion.
    assert_eq!(
        s.coldchain.excursions.len(),
        1,
        "{:?}",
        s.coldchain.excursions
    );
    let later = &s.coldchain.days[1..];
    assert!(
        later
            .iter()
            .all(|d| d.minutes_below + d.minutes_above == 0.0),
        "{later:?}"
    );
}

#[test]
fn a_six_hour_power_cut_raises_mains_lost_and_an_excursion_that_closes_after_recovery() {
    let s = common::run_days(2.0, Some("power-cut-6h.toml"));
    let alarms: Vec<_> = s.coldchain.alarms.iter().map(|a| a.alarm.code()).collect();
    assert!(alarms.contains(&"MAINS_LOST"), "{alarms:?}");
    let cut = s.coldchain.excursions.last().unwrap();
    assert!(cut.end.is_some(), "recovered after mains returned");
    assert!(cut.max > 10.0 && cut.max < 22.0, "{cut:?}");
    assert!((s.fridge.mains_off_minutes - 360.0).abs() <= 1.0);
}

#[test]
fn the_naive_baseline_short_cycles_and_trusts_a_stuck_probe() {
    let run = |strategy| {
        let text = r#"
name = "stuck air probe"
[[event]]
at = "1d 1h"
action = "probe_fault"
probe = "air"
fault = "stuck"
for = "3h"
"#;
        common::run(medbox::sim::SimOptions {
            scenario: Some(Scenario::parse(text, Path::new("stuck.toml")).unwrap()),
            strategy,
            keep_records: false,
            ..common::options(2.0)
        })
    };
    let medbox_run = run(medbox::controller::Strategy::Protected);
    let naive = run(medbox::controller::Strategy::NaiveBaseline);
    assert!(naive.fridge.compressor_starts > medbox_run.fridge.compressor_starts);
    assert_eq!(medbox_run.probe_faults.get("air:STUCK"), Some(&1));
    assert!(naive.coldchain.excursions.len() > medbox_run.coldchain.excursions.len());
}

/// A cold-chain alarm sounds at any hour, whatever else has the buzzer: its on-switch comes
/// within a minute of every alarm raised (the door left open an hour, here).
#[test]
fn a_raised_cold_chain_alarm_sounds_the_buzzer() {
    let s = common::run_days(1.5, Some("door-left-open.toml"));
    let door: Vec<_> = s
        .coldchain
        .alarms
        .iter()
        .filter(|a| a.at > s.start + chrono::Duration::hours(12))
        .collect();
    assert!(!door.is_empty(), "{:?}", s.coldchain.alarms);
    for a in door {
        assert!(
            s.truth
                .buzzer_on_at
                .iter()
                .any(|t| *t >= a.at - chrono::Duration::minutes(1)
                    && *t <= a.at + chrono::Duration::minutes(1)),
            "{a:?} {:?}",
            s.truth.buzzer_on_at
        );
    }
}

/// Two probes that disagree (docs/dose-safety.md): for every way one probe can go wrong that the
/// model can inject, started cold, the arbiter blames the right probe (never the honest one), the
/// PROBE_DISAGREEMENT alarm comes within 30 min of the disagreement becoming visible (the offset
/// reaching `max_disagreement`: at once for a jump, after 3 h for a 0.5 °C/h creep), every reading
/// in doubt is counted uncertain, and the stock itself stays within 2–8 °C.
#[test]
fn two_probes_that_disagree_are_an_alarm_and_the_stock_stays_in_range() {
    use medbox::coldchain::arbiter::Doubt;
    use medbox::coldchain::monitor::AlarmKind;
    let hour = |h: f64| chrono::Duration::seconds((h * 3600.0) as i64);
    for (file, suspect, visible_after_h) in [
        ("vial-probe-drifts-up.toml", Doubt::VialSuspect, 6.0),
        ("vial-probe-drifts-down.toml", Doubt::VialSuspect, 6.0),
        ("air-probe-drifts-up.toml", Doubt::AirSuspect, 6.0),
        ("air-probe-drifts-down.toml", Doubt::AirSuspect, 6.0),
        ("vial-probe-creeps-up.toml", Doubt::VialSuspect, 9.0),
        ("vial-probe-creeps-down.toml", Doubt::VialSuspect, 9.0),
        ("air-probe-creeps-up.toml", Doubt::AirSuspect, 9.0),
        ("air-probe-creeps-down.toml", Doubt::AirSuspect, 9.0),
    ] {
        let s = common::run_days(1.0, Some(file));
        let t = &s.truth;
        assert_eq!(
            (t.product_minutes_below, t.product_minutes_above),
            (0.0, 0.0),
            "{file}: the stock left 2–8 °C ({:.2}–{:.2} °C)",
            t.air_min,
            t.air_max
        );
        let alarm = s
            .coldchain
            .alarms
            .iter()
            .find(|a| a.alarm == AlarmKind::ProbeDisagreement)
            .unwrap_or_else(|| panic!("{file}: no PROBE_DISAGREEMENT alarm"));
        let visible = s.start + hour(visible_after_h);
        assert!(
            alarm.at <= visible + hour(0.5),
            "{file}: alarm at {}, disagreement visible from {visible}",
            alarm.at
        );
        assert!(
            alarm.detail.is_some(),
            "{file}: the alarm says what control does"
        );
        let blamed: Vec<Doubt> = s
            .probe_doubts
            .iter()
            .filter_map(|d| d.doubt)
            .filter(|d| *d != Doubt::Undecided)
            .collect();
        assert!(
            !blamed.is_empty(),
            "{file}: nobody blamed: {:?}",
            s.probe_doubts
        );
        assert!(
            blamed.iter().all(|d| *d == suspect),
            "{file}: blamed {blamed:?}, expected {suspect:?}"
        );
        assert_eq!(
            s.probe_doubts.last().and_then(|d| d.doubt),
            None,
            "{file}: the doubt ends once the fault does"
        );
        assert!(s.fridge.minutes_uncertain >= 60.0, "{file}: {:?}", s.fridge);
        // Every record in doubt says so, and none of them is counted in range.
        let doubted = s.records.iter().filter(|r| r.doubt.is_some()).count() as f64;
        assert!(
            (doubted - s.fridge.minutes_uncertain).abs() <= 1.0,
            "{file}"
        );
        // Only the probe disagreement: no false heat, freeze or excursion alarm.
        assert_eq!(
            s.coldchain.alarms.len(),
            1,
            "{file}: {:?}",
            s.coldchain.alarms
        );
    }
}

/// The relay's own maximum on-time is the last line of defence: when it acts while the controller
/// still asks for cooling (here the naive baseline, which knows no maximum on-time, pulling the
/// cabinet down from room temperature), that is a device fault and a latched alarm, not silence.
#[test]
fn the_relay_tripping_at_its_maximum_on_time_is_a_fault_and_a_latched_alarm() {
    use medbox::coldchain::monitor::AlarmKind;
    let s = common::run(medbox::sim::SimOptions {
        strategy: medbox::controller::Strategy::NaiveBaseline,
        ..common::options(0.5)
    });
    let trips: Vec<_> = s
        .coldchain
        .alarms
        .iter()
        .filter(|a| a.alarm == AlarmKind::CompressorTrip)
        .collect();
    assert_eq!(
        trips.len(),
        1,
        "raised once, latched: {:?}",
        s.coldchain.alarms
    );
    assert!(trips[0]
        .detail
        .as_deref()
        .unwrap()
        .contains("fridge.compressor.max_on"));
    // The pull-down from 22 °C needs more than the relay's 45 min: the first trip comes then.
    let after = (trips[0].at - s.start).num_minutes();
    assert!((45..=50).contains(&after), "tripped after {after} min");
    assert!(s
        .device_faults
        .iter()
        .any(|f| f.contains("maximum on-time")));
    // The protected controller never asks for more than its own maximum on-time.
    let protected = common::run_days(0.5, None);
    assert!(!protected
        .coldchain
        .alarms
        .iter()
        .any(|a| a.alarm == AlarmKind::CompressorTrip));
}

/// A unit that falls while the carousel is only positioning may be another patient's medicine in
/// the cup: it is reported naming the slot it fell from, and that slot's count goes down.
#[test]
fn a_stray_drop_raises_an_alert_naming_the_slot_it_fell_from() {
    let s = common::run_days(0.1, Some("loose-unit.toml"));
    assert_eq!(s.truth.units_released, 2, "the dose and the loose unit");
    assert_eq!(
        s.dispenser.stray_drops,
        [(1, 1)].into_iter().collect(),
        "one unit, from slot 1"
    );
    // The counts follow what the beam saw leave each slot.
    let stock = &s.dispenser.stock;
    assert_eq!(stock.get(&1), Some(&(s.truth.stock[1])));
    assert_eq!(stock.get(&3), Some(&(s.truth.stock[3])));
}

/// The store tells a clean stop from a kill by a run's start and stop rows, so nothing a run does
/// may be recorded before its start: here a command is already waiting when the tasks first run
/// (the router is spawned first and would answer it at once).
#[test]
fn a_run_records_its_start_before_anything_else_it_does() {
    use medbox::controller::{self, commands::Inbound, hardware::Offload, Dosing, Strategy};
    use medbox::events::Event;
    let rt = common::paused_runtime();
    let _time = rt.enter();
    let profile = common::profile();
    let clock = std::sync::Arc::new(medbox::clock::SimClock::new(
        profile.sim.as_ref().expect("sim model").start,
        1.0,
    ));
    let (fridge, dispenser, _handle) =
        medbox::board::sim::build(&profile, clock.clone()).expect("board builds");
    let mut running = controller::start(
        clock,
        Default::default(),
        Strategy::Protected,
        fridge,
        dispenser,
        Dosing::default(),
        Offload::Inline,
    );
    running
        .commands
        .try_send(Inbound {
            name: "refill".into(),
            role: Some("pharmacist".into()),
            payload: b"not json".to_vec(),
        })
        .unwrap();
    let events: Vec<Event> = rt.block_on(async {
        let mut seen = Vec::new();
        while let Some(e) = running.events.recv().await {
            let answered = matches!(e, Event::CommandResult { .. });
            seen.push(e);
            if answered {
                return seen;
            }
        }
        seen
    });
    assert!(
        matches!(events.first(), Some(Event::Started { .. })),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(Event::CommandResult { ok: false, .. })),
        "the malformed command was answered: {events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Started { .. }))
            .count(),
        1
    );
}
