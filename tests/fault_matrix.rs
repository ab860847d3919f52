//! Every fault the simulated board can inject, in one table: for each, what the appliance must do
//! (its safe state), what it must say (the alarm or alert), and what the stock itself went through
//! (the model's truth). `docs/cold-chain.md` documents the same table.

mod common;

use medbox::coldchain::monitor::AlarmKind;
use medbox::coldchain::ControlMode;
use medbox::scenario::Scenario;
use medbox::sim::SimSummary;
use std::path::Path;

/// Plays `events` (TOML `[[event]]` tables) for `hours`, started cold at 5 °C with the door shut.
fn play(events: &str, hours: f64) -> SimSummary {
    let text = format!("name = \"fault\"\ninitial = 5.0\n{events}");
    let scenario = Scenario::parse(&text, Path::new("fault.toml")).expect("valid scenario");
    common::run_with(hours / 24.0, Some(scenario), None)
}

fn alarms(s: &SimSummary) -> Vec<AlarmKind> {
    s.coldchain.alarms.iter().map(|a| a.alarm).collect()
}

/// Minutes from the start of the run to the first `kind` alarm.
fn alarm_after(s: &SimSummary, kind: AlarmKind) -> Option<i64> {
    s.coldchain
        .alarms
        .iter()
        .find(|a| a.alarm == kind)
        .map(|a| (a.at - s.start).num_minutes())
}

fn minutes_in(s: &SimSummary, mode: ControlMode) -> usize {
    s.records.iter().filter(|r| r.mode == mode).count()
}

fn in_range(s: &SimSummary) -> bool {
    s.truth.product_minutes_below == 0.0 && s.truth.product_minutes_above == 0.0
}

fn probe_fault(probe: &str, fault: &str, extra: &str) -> String {
    format!(
        "[[event]]\nat = \"2h\"\naction = \"probe_fault\"\nprobe = \"{probe}\"\nfault = \"{fault}\"\nfor = \"3h\"\n{extra}"
    )
}

fn machine(fault: &str) -> String {
    format!(
        "[[event]]\nat = \"2h\"\naction = \"machine_fault\"\nmachine = \"{fault}\"\nfor = \"3h\"\n"
    )
}

type Check = fn(&SimSummary);

#[test]
fn every_fault_the_board_can_inject_has_its_safe_state_its_alarm_and_a_known_outcome() {
    let cases: Vec<(&str, String, f64, Check)> = vec![
        (
            "vial probe gone",
            probe_fault("vial", "disconnected", ""),
            8.0,
            |s| {
                assert_eq!(s.probe_faults.get("vial:NOT_RESPONDING"), Some(&1));
                assert_eq!(minutes_in(s, ControlMode::FailSafe), 0, "air probe takes over");
                assert!(in_range(s), "{:?}", s.truth);
            },
        ),
        (
            "vial probe stuck",
            probe_fault("vial", "stuck", ""),
            8.0,
            |s| {
                assert_eq!(s.probe_faults.get("vial:STUCK"), Some(&1), "{:?}", s.probe_faults);
                assert!(in_range(s), "{:?}", s.truth);
            },
        ),
        (
            "vial probe noisy",
            probe_fault("vial", "noisy", "sigma = 1.5\n"),
            8.0,
            |s| {
                assert!(
                    s.probe_faults.contains_key("vial:IMPLAUSIBLE_RATE"),
                    "{:?}",
                    s.probe_faults
                );
                assert!(in_range(s), "{:?}", s.truth);
            },
        ),
        (
            "vial probe off by +5 °C",
            probe_fault("vial", "offset", "by = \"5.0\"\n"),
            8.0,
            |s| {
                assert!(alarm_after(s, AlarmKind::ProbeDisagreement).unwrap() <= 150);
                assert!(in_range(s), "{:?}", s.truth);
            },
        ),
        (
            "air probe off by −5 °C",
            probe_fault("air", "offset", "by = \"-5.0\"\n"),
            8.0,
            |s| {
                assert!(alarm_after(s, AlarmKind::ProbeDisagreement).unwrap() <= 150);
                assert!(in_range(s), "{:?}", s.truth);
            },
        ),
        (
            "air probe 85.000 power-on value",
            probe_fault("air", "power_on_85", ""),
            8.0,
            |s| {
                assert_eq!(s.probe_faults.get("air:POWER_ON_VALUE"), Some(&1));
                assert!(!alarms(s).contains(&AlarmKind::Heat), "never a temperature");
                assert!(in_range(s), "{:?}", s.truth);
            },
        ),
        (
            "air probe CRC errors",
            probe_fault("air", "crc", ""),
            8.0,
            |s| {
                assert_eq!(s.probe_faults.get("air:BUS_ERROR"), Some(&1));
                assert!(in_range(s), "{:?}", s.truth);
            },
        ),
        (
            "both probes gone",
            probe_fault("vial", "disconnected", "") + &probe_fault("air", "disconnected", ""),
            8.0,
            |s| {
                // The fail-safe duty cycle from when the air's last reading went stale.
                let fs = minutes_in(s, ControlMode::FailSafe);
                assert!((165..=181).contains(&fs), "{fs} min fail-safe");
                let at = alarm_after(s, AlarmKind::NoValidProbe).expect("no-valid-probe alarm");
                assert!((130..=131).contains(&at), "after {at} min");
                assert!(in_range(s), "{:?}", s.truth);
            },
        ),
        (
            "door left open an hour",
            "[[event]]\nat = \"2h\"\naction = \"door_open\"\nfor = \"1h\"\n".into(),
            6.0,
            |s| {
                let at = alarm_after(s, AlarmKind::DoorOpen).expect("door alarm");
                assert!((125..=126).contains(&at), "after {at} min");
                // An hour of open door warms the stock well out of range (towards the 22 °C
                // room), and the excursion alarm follows the door alarm.
                assert!(s.truth.product_minutes_above > 60.0, "{:?}", s.truth);
                assert!(s.truth.air_max < 20.0, "{:?}", s.truth);
                assert!(alarms(s).contains(&AlarmKind::Excursion));
            },
        ),
        (
            "power cut 3 h",
            "[[event]]\nat = \"2h\"\naction = \"power_cut\"\nfor = \"3h\"\n".into(),
            8.0,
            |s| {
                let at = alarm_after(s, AlarmKind::MainsLost).expect("mains alarm");
                assert!((120..=121).contains(&at), "after {at} min");
                assert!(minutes_in(s, ControlMode::PowerWait) >= 180);
                assert_eq!(s.truth.product_minutes_below, 0.0);
            },
        ),
        (
            "compressor relay welded",
            machine("relay_welded"),
            6.0,
            |s| {
                let at = alarm_after(s, AlarmKind::CompressorStuckOn).expect("stuck-on alarm");
                assert!(at <= 120 + 40, "after {at} min");
                // Nothing below the relay can stop it: the stock cools past 2 °C.
                assert!(s.truth.product_minutes_below > 0.0, "{:?}", s.truth);
            },
        ),
        (
            "compressor dead",
            machine("relay_dead"),
            6.0,
            |s| {
                let at = alarm_after(s, AlarmKind::CoolingFailed).expect("cooling-failed alarm");
                // The thermostat first waits out its rest (nothing is wrong yet), then runs
                // for the 20 min the check needs.
                assert!(at <= 120 + 60, "after {at} min");
                assert!(s.truth.air_max > 8.0, "the stock warms: {:?}", s.truth);
            },
        ),
        (
            "hot room 32 °C",
            "[[event]]\nat = \"2h\"\naction = \"ambient\"\ncelsius = 32.0\n".into(),
            12.0,
            |s| {
                assert!(alarms(s).is_empty(), "{:?}", alarms(s));
                assert!(in_range(s), "{:?}", s.truth);
            },
        ),
        (
            "carousel jammed",
            "[[event]]\nat = \"2h\"\naction = \"jam\"\n[[event]]\nat = \"2h 1m\"\naction = \"dispense\"\nslot = 1\nunits = 1\n".into(),
            3.0,
            |s| {
                assert!(s.device_faults.iter().any(|f| f.contains("jammed")), "{:?}", s.device_faults);
                assert_eq!(s.truth.units_released, 0);
            },
        ),
        (
            "empty slot",
            "[[event]]\nat = \"2h\"\naction = \"empty_slot\"\nslot = 2\n[[event]]\nat = \"2h 1m\"\naction = \"dispense\"\nslot = 2\nunits = 1\n".into(),
            3.0,
            |s| {
                assert_eq!((s.dispenser.units_seen, s.truth.units_released), (0, 0));
                assert_eq!(s.dispenser.dispenses, 1);
            },
        ),
        (
            "home sensor lost",
            "[[event]]\nat = \"2h\"\naction = \"machine_fault\"\nmachine = \"home_sensor_lost\"\n[[event]]\nat = \"2h 1m\"\naction = \"rehome\"\n[[event]]\nat = \"2h 5m\"\naction = \"dispense\"\nslot = 1\nunits = 1\n".into(),
            3.0,
            |s| {
                assert!(
                    s.device_faults.iter().any(|f| f.contains("home sensor not found")),
                    "{:?}",
                    s.device_faults
                );
                assert!(
                    s.device_faults.iter().any(|f| f.contains("not homed")),
                    "the dispense is refused: {:?}",
                    s.device_faults
                );
                assert_eq!(s.truth.units_released, 0, "nothing released without home");
            },
        ),
        (
            "break-beam blocked",
            machine("beam_blocked") + "[[event]]\nat = \"2h 1m\"\naction = \"dispense\"\nslot = 1\nunits = 1\n",
            3.0,
            |s| {
                assert!(
                    s.device_faults.iter().any(|f| f.contains("break-beam is blocked")),
                    "{:?}",
                    s.device_faults
                );
                assert_eq!(s.truth.units_released, 0, "nothing moved");
            },
        ),
    ];
    let mut failed = Vec::new();
    for (name, events, hours, check) in cases {
        let s = play(&events, hours);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&s)));
        if let Err(e) = result {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("{name}: {msg}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
