//! The simulated board's physics, observed through the same drivers the Pi uses.

mod common;

use medbox::board::sim::{OutLine, Probe, ProbeFault};
use medbox::config::Level;
use medbox::devices::{CarouselError, ProbeError};
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

/// Runs the model forward by `d` of simulated time.
fn pass(handle: &medbox::board::sim::SimHandle, d: Duration) {
    handle.block_for(d);
}

#[test]
fn compressor_pulls_the_cabinet_down_from_room_temperature() {
    let rt = common::paused_runtime();
    let _time = rt.enter();
    let (mut fridge, _d, handle) = common::board(&rt, &common::profile());
    let before = fridge.vial.read().unwrap().0;
    assert!(
        (before - 22.0).abs() < 0.2,
        "starts at room temperature, read {before}"
    );
    handle.world().set_output(OutLine::Compressor, true);
    pass(&handle, 3 * HOUR);
    let air = fridge.air.read().unwrap().0;
    let vial = fridge.vial.read().unwrap().0;
    // 25 W against a 0.6 W/K leak and 8 kJ/K: several degrees per hour.
    assert!(air < 8.0, "air after 3 h of cooling: {air}");
    assert!(
        vial > air,
        "the buffered vial lags the air: vial {vial}, air {air}"
    );
}

#[test]
fn fridge_warms_after_a_power_cut_at_a_plausible_rate() {
    let rt = common::paused_runtime();
    let _time = rt.enter();
    let (mut fridge, _d, handle) = common::board(&rt, &common::profile());
    handle.world().set_output(OutLine::Compressor, true);
    // Cool to about 5 °C.
    while fridge.vial.read().unwrap().0 > 5.0 {
        pass(&handle, Duration::from_secs(60));
    }
    handle.world().set_mains(false);
    let t0 = fridge.vial.read().unwrap().0;
    pass(&handle, HOUR);
    let t1 = fridge.vial.read().unwrap().0;
    let rate = t1 - t0;
    // A loaded 50 L cabinet with the compressor dead: a few degrees in the first hour.
    assert!(
        (1.0..=6.0).contains(&rate),
        "warmed {rate:.2} °C in the first hour"
    );
}

#[test]
fn an_open_door_warms_the_air_much_faster_than_a_closed_one() {
    let rt = common::paused_runtime();
    let _time = rt.enter();
    let profile = common::profile();
    let warm = |open: bool| {
        let (mut fridge, _d, handle) = common::board(&rt, &profile);
        handle.world().set_output(OutLine::Compressor, true);
        while fridge.air.read().unwrap().0 > 5.0 {
            pass(&handle, Duration::from_secs(60));
        }
        handle.world().set_output(OutLine::Compressor, false);
        handle.world().set_door_open(open);
        let t0 = fridge.air.read().unwrap().0;
        pass(&handle, Duration::from_secs(600));
        fridge.air.read().unwrap().0 - t0
    };
    let (closed, open) = (warm(false), warm(true));
    assert!(
        open > 3.0 * closed,
        "10 min door open warmed {open:.2} °C, closed {closed:.2} °C"
    );
}

#[test]
fn disconnected_tmp117_does_not_acknowledge() {
    let rt = common::paused_runtime();
    let _time = rt.enter();
    let (mut fridge, _d, handle) = common::board(&rt, &common::profile());
    handle
        .world()
        .inject_probe_fault(Probe::Vial, ProbeFault::Disconnected, None);
    assert!(matches!(
        fridge.vial.read(),
        Err(ProbeError::NotResponding(_))
    ));
    handle.world().clear_probe_faults(Probe::Vial);
    assert!(fridge.vial.read().is_ok());
}

#[test]
fn ds18b20_signatures_reach_the_driver_as_text() {
    let rt = common::paused_runtime();
    let _time = rt.enter();
    let (mut fridge, _d, handle) = common::board(&rt, &common::profile());
    for (fault, expected) in [
        (ProbeFault::PowerOn85, ProbeError::PowerOnValue),
        (ProbeFault::FailedConversion, ProbeError::ConversionFailed),
    ] {
        handle.world().inject_probe_fault(Probe::Air, fault, None);
        assert_eq!(fridge.air.read(), Err(expected));
    }
    handle
        .world()
        .inject_probe_fault(Probe::Air, ProbeFault::Crc, None);
    assert!(matches!(fridge.air.read(), Err(ProbeError::Bus(_))));
}

#[test]
fn stuck_probe_repeats_its_value_while_the_fridge_changes() {
    let rt = common::paused_runtime();
    let _time = rt.enter();
    let (mut fridge, _d, handle) = common::board(&rt, &common::profile());
    handle
        .world()
        .inject_probe_fault(Probe::Vial, ProbeFault::Stuck, None);
    let a = fridge.vial.read().unwrap();
    handle.world().set_output(OutLine::Compressor, true);
    pass(&handle, HOUR);
    assert_eq!(fridge.vial.read().unwrap(), a);
    assert!(handle.world().thermals().vial < a.0 - 1.0);
}

#[test]
fn carousel_homes_and_releases_one_unit_per_stroke() {
    let rt = common::paused_runtime();
    let _time = rt.enter();
    let (_f, mut d, handle) = common::board(&rt, &common::profile());
    let stock = handle.world().stock().to_vec();
    let p0 = handle.world().carousel_position();
    let steps = d.carousel.home().unwrap();
    assert_eq!(
        handle.world().carousel_position(),
        0,
        "from {p0} in {steps} steps"
    );
    let report = d.carousel.dispense(1, 2).unwrap();
    assert_eq!(report.drops_seen, 2);
    assert_eq!(report.stray_drops, 0);
    assert!(report.returned_home);
    let w = handle.world();
    assert_eq!(w.stock()[1], stock[1] - 2);
    assert_eq!(
        w.stock()[0],
        stock[0],
        "positioning past slot 0 released nothing"
    );
    assert_eq!(w.units_in_cup(), 2);
}

#[test]
fn empty_slot_releases_nothing_and_the_beam_sees_nothing() {
    let rt = common::paused_runtime();
    let _time = rt.enter();
    let (_f, mut d, handle) = common::board(&rt, &common::profile());
    d.carousel.home().unwrap();
    handle.world().empty_slot(3);
    let report = d.carousel.dispense(3, 1).unwrap();
    assert_eq!(report.drops_seen, 0);
    assert!(report.returned_home);
}

#[test]
fn jammed_carousel_is_reported_and_never_homes() {
    let rt = common::paused_runtime();
    let _time = rt.enter();
    let (_f, mut d, handle) = common::board(&rt, &common::profile());
    d.carousel.home().unwrap();
    handle.world().set_jammed(true);
    assert!(matches!(
        d.carousel.dispense(2, 1),
        Err(CarouselError::Jammed { .. })
    ));
    assert!(matches!(
        d.carousel.dispense(2, 1),
        Err(CarouselError::NotHomed)
    ));
    // Jammed away from home: homing gives up after a revolution and a slot.
    handle.world().set_jammed(false);
    d.carousel.home().unwrap();
    d.carousel.dispense(0, 1).unwrap();
    handle.world().set_jammed(true);
    assert!(matches!(
        d.carousel.home(),
        Err(CarouselError::HomeNotFound { .. }) | Ok(_)
    ));
}

#[test]
fn step_dir_carousel_works_through_the_same_mechanism() {
    let rt = common::paused_runtime();
    let _time = rt.enter();
    let src = include_str!("../hw/sim.toml").replace(
        "motor = { uln2003 = { coils = [5, 6, 13, 19] } }",
        "motor = { step_dir = { step = 5, dir = 6, enable = 13 } }",
    );
    let profile: medbox::config::BoardProfile = toml::from_str(&src).unwrap();
    let (_f, mut d, handle) = common::board(&rt, &profile);
    let before = handle.world().stock()[4];
    d.carousel.home().unwrap();
    let r = d.carousel.dispense(4, 1).unwrap();
    assert_eq!((r.drops_seen, r.returned_home), (1, true));
    assert_eq!(handle.world().stock()[4], before - 1);
    assert!(
        !handle.world().output_active(OutLine::Enable, Level::Low),
        "driver disabled after the move"
    );
}

/// The cup and the button say when they move, through the same device trait the dispenser
/// task waits on: a 300 ms press is seen at its start and at its end, a lifted cup when it is
/// lifted and when it comes back, each at the simulated instant it happens and with nothing
/// polled in between.
#[test]
fn the_cup_and_the_button_tell_their_edges_at_the_instant_they_move() {
    let rt = common::paused_runtime();
    let _time = rt.enter();
    let (_f, mut d, handle) = common::board(&rt, &common::profile());
    let clock = handle.clock().clone();
    let t0 = medbox::clock::Clock::monotonic(&*clock);
    let settle = d.button.settle();
    assert!(!d.button.sample(t0).unwrap());
    rt.block_on(async {
        let press = {
            let handle = handle.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(7)).await;
                handle.world().press_button();
            }
        };
        let (edge, ()) = tokio::join!(
            d.button.edge().expect("the sim button tells its edges"),
            press
        );
        edge.unwrap();
    });
    let pressed_at = medbox::clock::Clock::monotonic(&*clock);
    assert_eq!(pressed_at - t0, Duration::from_secs(7));
    d.button.sample(pressed_at).unwrap();
    handle.block_for(settle);
    assert!(
        d.button.sample(pressed_at + settle).unwrap(),
        "the press is believed once settled"
    );
    // The press ends by itself 300 ms after it began: that is an edge too.
    rt.block_on(d.button.edge().expect("edges")).unwrap();
    let released_at = medbox::clock::Clock::monotonic(&*clock);
    assert_eq!(released_at - pressed_at, Duration::from_millis(300));
    // The cup: lifted for 20 s.
    assert!(d.tray.sample(released_at).unwrap());
    rt.block_on(async {
        let lift = {
            let handle = handle.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                handle.world().pick_up_cup(Duration::from_secs(20));
            }
        };
        let (edge, ()) = tokio::join!(d.tray.edge().expect("the sim cup tells its edges"), lift);
        edge.unwrap();
    });
    let lifted_at = medbox::clock::Clock::monotonic(&*clock);
    assert_eq!(lifted_at - released_at, Duration::from_secs(60));
    // Sampled at the edge, as the dispenser task does; until then a wait ends at once, since
    // the line moved after it was last looked at.
    rt.block_on(d.tray.edge().expect("edges")).unwrap();
    assert_eq!(medbox::clock::Clock::monotonic(&*clock), lifted_at);
    d.tray.sample(lifted_at).unwrap();
    rt.block_on(d.tray.edge().expect("edges")).unwrap();
    let back_at = medbox::clock::Clock::monotonic(&*clock);
    assert_eq!(back_at - lifted_at, Duration::from_secs(20));
}
