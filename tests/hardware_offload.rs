//! Blocking device calls stay off the async runtime: on a board whose calls block the way the
//! Pi's do (a carousel turn holds its thread for seconds, a probe conversion for a tenth of a
//! second), fridge readings keep their cadence and commands are answered while the carousel
//! turns. The runtime has one thread, so a single blocking call on it would stall everything;
//! the bounds (a gap under 1 s during a 2.5 s turn) are far from what a stall would show.

use medbox::appliance::{self, Settings};
use medbox::clock::{Clock, SimClock};
use medbox::controller::hardware::Offload;
use medbox::controller::{DispenserCommand, FridgeCommand};
use medbox::devices::{Carousel, CarouselError, DropReport, ProbeError, Thermometer};
use medbox::dosing::dispenser::Command;
use medbox::events::Event;
use medbox::units::Celsius;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a turn holds its thread.
const TURN: Duration = Duration::from_millis(2500);

/// A carousel whose turns block their thread, as stepper pacing does on the Pi.
struct SlowCarousel(Box<dyn Carousel>);

impl Carousel for SlowCarousel {
    fn home(&mut self) -> Result<u32, CarouselError> {
        self.0.home()
    }
    fn dispense(&mut self, slot: u8, units: u32) -> Result<DropReport, CarouselError> {
        std::thread::sleep(TURN);
        self.0.dispense(slot, units)
    }
    fn release(&mut self) -> Result<(), CarouselError> {
        self.0.release()
    }
    fn slots(&self) -> u8 {
        self.0.slots()
    }
    fn slot_capacity(&self) -> u32 {
        self.0.slot_capacity()
    }
}

/// A probe whose conversion blocks its thread.
struct SlowProbe(Box<dyn Thermometer>);

impl Thermometer for SlowProbe {
    fn read(&mut self) -> Result<Celsius, ProbeError> {
        std::thread::sleep(Duration::from_millis(100));
        self.0.read()
    }
}

#[derive(Default)]
struct Seen {
    readings: Vec<Instant>,
    dispensed: Option<Instant>,
}

#[test]
fn while_the_carousel_turns_fridge_readings_keep_their_cadence_and_commands_are_answered() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (sent_at, answered_at) = rt.block_on(async {
        let profile = medbox::config::BoardProfile::default_sim().unwrap();
        let coldchain = medbox::coldchain::ColdChainConfig {
            control_period: Duration::from_millis(200),
            record_period: Duration::from_millis(200),
            ..Default::default()
        };
        let settings = Settings {
            device_id: "offload".into(),
            profile: profile.clone(),
            coldchain,
            schedules: Vec::new(),
            refill_days: None,
            strategy: medbox::controller::Strategy::Protected,
            fhir: false,
            store: None,
            uplink: None,
            offload: Offload::Blocking,
        };
        let opened = appliance::open(settings, "offload-test".into()).unwrap();
        let sim_clock = Arc::new(SimClock::new(chrono::Utc::now(), 1.0));
        let clock: Arc<dyn Clock> = sim_clock.clone();
        let (mut fridge, mut dispenser, _model) =
            medbox::board::sim::build(&profile, sim_clock).unwrap();
        fridge.vial = Box::new(SlowProbe(fridge.vial));
        fridge.air = Box::new(SlowProbe(fridge.air));
        dispenser.carousel = Box::new(SlowCarousel(dispenser.carousel));
        let started = opened
            .restore(&*clock)
            .unwrap()
            .start(clock, fridge, dispenser)
            .unwrap();
        let handles = started.handles().clone();
        let done = Arc::new(tokio::sync::Notify::new());
        // Once the fridge has settled, turn the carousel and, while it turns, ask the fridge.
        let asking = tokio::spawn({
            let done = done.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let sent_at = Instant::now();
                handles
                    .dispenser
                    .send(DispenserCommand::tell(Command::TestDispense {
                        slot: 0,
                        units: 1,
                    }))
                    .await
                    .unwrap();
                tokio::time::sleep(TURN / 3).await;
                let (reply, answer) = tokio::sync::oneshot::channel();
                handles
                    .fridge
                    .send(FridgeCommand::AcknowledgeAlarm {
                        alarm: medbox::coldchain::monitor::AlarmKind::Excursion,
                        actor: "n-1".into(),
                        comment: "test".into(),
                        reply: Some(reply),
                    })
                    .await
                    .unwrap();
                let answer = answer.await.unwrap();
                assert!(answer.is_err(), "no alarm is raised: {answer:?}");
                let answered_at = Instant::now();
                done.notified().await;
                (sent_at, answered_at)
            }
        });
        let record = seen.clone();
        let stopped = started
            .serve(
                async {
                    done.notified().await;
                    // A few more readings after the turn.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    done.notify_waiters();
                },
                |ev| {
                    let mut s = record.lock().unwrap();
                    match ev {
                        Event::Reading(_) => s.readings.push(Instant::now()),
                        Event::Dispensed { .. } => {
                            s.dispensed = Some(Instant::now());
                            done.notify_waiters();
                        }
                        _ => {}
                    }
                },
                |_| {},
            )
            .await
            .unwrap();
        drop(stopped);
        asking.await.unwrap()
    });
    let seen = seen.lock().unwrap();
    let dispensed = seen.dispensed.expect("the test dispense ran");
    assert!(
        dispensed - sent_at >= TURN,
        "the turn took its time: {:?}",
        dispensed - sent_at
    );
    assert!(
        answered_at < dispensed,
        "the fridge answered while the carousel turned ({:?} after the dispense began, which \
         took {:?})",
        answered_at - sent_at,
        dispensed - sent_at
    );
    let during: Vec<Instant> = seen
        .readings
        .iter()
        .copied()
        .filter(|t| *t >= sent_at && *t <= dispensed)
        .collect();
    assert!(
        during.len() >= 5,
        "readings went on during the turn: {} in {:?}",
        during.len(),
        dispensed - sent_at
    );
    let widest = std::iter::once(sent_at)
        .chain(during.iter().copied())
        .chain(std::iter::once(dispensed))
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap();
    assert!(
        widest < Duration::from_secs(1),
        "the widest gap between readings during the turn was {widest:?}"
    );
}
