//! Blocking device calls stay off the async runtime: while the carousel's turn holds its thread
//! (here until the test lets it go, as stepper pacing holds it for seconds on the Pi), fridge
//! readings go on and the fridge answers a command. The runtime has one thread, so a single
//! blocking call on it would stall everything: the turn would never be let go, and after
//! [`PATIENCE`] it ends by itself with no reading taken in between. The simulated probes'
//! conversions move the simulated clock past each 200 ms control period, so the fridge also meets
//! a bus as slow as its period (its commands must still be answered).

use medbox::appliance::{self, Settings};
use medbox::clock::{Clock, SimClock};
use medbox::controller::hardware::Offload;
use medbox::controller::{DispenserCommand, FridgeCommand};
use medbox::devices::{Carousel, CarouselError, DropReport};
use medbox::dosing::dispenser::Command;
use medbox::events::Event;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The longest a turn waits to be let go (only reached when the runtime is stalled).
const PATIENCE: Duration = Duration::from_secs(30);

/// A carousel whose turns hold their thread until the test lets them go.
struct HeldTurn {
    inner: Box<dyn Carousel>,
    turning: Arc<tokio::sync::Notify>,
    go: Mutex<mpsc::Receiver<()>>,
}

impl Carousel for HeldTurn {
    fn home(&mut self) -> Result<u32, CarouselError> {
        self.inner.home()
    }
    fn dispense(&mut self, slot: u8, units: u32) -> Result<DropReport, CarouselError> {
        self.turning.notify_one();
        let _ = self
            .go
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recv_timeout(PATIENCE);
        self.inner.dispense(slot, units)
    }
    fn release(&mut self) -> Result<(), CarouselError> {
        self.inner.release()
    }
    fn slots(&self) -> u8 {
        self.inner.slots()
    }
    fn slot_capacity(&self) -> u32 {
        self.inner.slot_capacity()
    }
}

#[test]
fn while_the_carousel_turns_fridge_readings_keep_their_cadence_and_commands_are_answered() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let readings = Arc::new(AtomicUsize::new(0));
    let reading = Arc::new(tokio::sync::Notify::new());
    let run = async {
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
        let (fridge, mut dispenser, _model) =
            medbox::board::sim::build(&profile, sim_clock).unwrap();
        let turning = Arc::new(tokio::sync::Notify::new());
        let (go, held) = mpsc::channel();
        dispenser.carousel = Box::new(HeldTurn {
            inner: dispenser.carousel,
            turning: turning.clone(),
            go: Mutex::new(held),
        });
        let started = opened
            .restore(&*clock)
            .unwrap()
            .start(clock, fridge, dispenser)
            .unwrap();
        let handles = started.handles().clone();
        let done = Arc::new(tokio::sync::Notify::new());
        let (count, wake) = (readings.clone(), reading.clone());
        let asking = tokio::spawn({
            let done = done.clone();
            async move {
                handles
                    .dispenser
                    .send(DispenserCommand::tell(Command::TestDispense {
                        slot: 0,
                        units: 1,
                    }))
                    .await
                    .unwrap();
                turning.notified().await;
                // The carousel is held mid-turn: five more readings, and an answer from the fridge.
                let at_start = count.load(Ordering::SeqCst);
                while count.load(Ordering::SeqCst) < at_start + 5 {
                    wake.notified().await;
                }
                let (reply, answer) = tokio::sync::oneshot::channel();
                handles
                    .fridge
                    .send(FridgeCommand::AcknowledgeAlarm {
                        alarm: medbox::coldchain::monitor::AlarmKind::DoorOpen,
                        actor: "n-1".into(),
                        comment: "test".into(),
                        reply: Some(reply),
                    })
                    .await
                    .unwrap();
                let answer = answer.await.unwrap();
                let during = count.load(Ordering::SeqCst) - at_start;
                go.send(()).unwrap();
                done.notified().await;
                (during, answer)
            }
        });
        let dispensed = Arc::new(AtomicUsize::new(0));
        let seen_dispensed = dispensed.clone();
        let stopped = started
            .serve(
                async {
                    done.notified().await;
                    done.notify_waiters();
                },
                |ev| match ev {
                    Event::Reading(_) => {
                        readings.fetch_add(1, Ordering::SeqCst);
                        reading.notify_waiters();
                    }
                    Event::Dispensed { .. } => {
                        seen_dispensed.fetch_add(1, Ordering::SeqCst);
                        done.notify_waiters();
                    }
                    _ => {}
                },
                |_| {},
            )
            .await
            .unwrap();
        drop(stopped);
        let (during, answer) = asking.await.unwrap();
        (during, answer, dispensed.load(Ordering::SeqCst))
    };
    let (during, answer, dispensed) = rt
        .block_on(async { tokio::time::timeout(2 * PATIENCE, run).await })
        .expect("the runtime stalled: a device call blocked its only thread");
    assert!(during >= 5, "readings went on during the turn: {during}");
    assert!(
        answer
            .as_ref()
            .is_err_and(|r| r.to_string().starts_with("NOT_RAISED")),
        "the fridge answered mid-turn: {answer:?}"
    );
    assert_eq!(dispensed, 1, "the turn ended once it was let go");
}
