//! The dispenser task: owns the carousel, the tray and button, buzzer and LED, and carries out
//! what the pure dispenser core ([`crate::dosing::dispenser`]) decides. It samples the inputs,
//! reads both clocks, turns the carousel when told to (after the dose's intent is durable) and
//! reports back; it decides nothing about doses itself.

use super::hardware::{Hardware, Offload};
use super::{device_fault, DispenserCommand, Reply};
use crate::clock::{self, Clock};
use crate::devices::{
    Annunciator, BinarySensor, Carousel, CarouselError, DispenserDevices, LineError,
};
use crate::dosing::dispenser::{Dispenser, Effect, Instant, Token, Turned};
use crate::events::Event;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long the store may take to make a dispense's intent durable before it is refused.
const DURABLE_WITHIN: Duration = Duration::from_secs(30);

/// The dispenser task's state: the devices, and the core that decides.
/// The dispenser's lines that never wait: the cup and button inputs, buzzer and LED.
struct Lines {
    tray: Box<dyn BinarySensor>,
    button: Box<dyn BinarySensor>,
    buzzer: Box<dyn Annunciator>,
    led: Box<dyn Annunciator>,
}

pub(super) struct DispenserTask {
    clock: Arc<dyn Clock>,
    /// Homing and turning take seconds of stepper pacing: on the blocking pool.
    carousel: Hardware<Box<dyn Carousel>>,
    dev: Lines,
    events: mpsc::Sender<Event>,
    core: Dispenser,
    /// Who waits for which answer.
    waiting: HashMap<Token, Reply>,
    next_token: Token,
    /// Where [`Effect::LoadHistory`] goes: the store's owner, which answers with
    /// [`crate::dosing::dispenser::Command::HistoryLoaded`].
    history: mpsc::Sender<()>,
}

impl DispenserTask {
    pub(super) fn new(
        clock: Arc<dyn Clock>,
        dev: DispenserDevices,
        offload: Offload,
        core: Dispenser,
        events: mpsc::Sender<Event>,
        history: mpsc::Sender<()>,
    ) -> Self {
        let DispenserDevices {
            carousel,
            tray,
            button,
            buzzer,
            led,
        } = dev;
        Self {
            clock,
            carousel: Hardware::new(carousel, offload),
            dev: Lines {
                tray,
                button,
                buzzer,
                led,
            },
            events,
            core,
            waiting: HashMap::new(),
            next_token: 0,
            history,
        }
    }

    fn now(&self) -> Instant {
        Instant {
            wall: self.clock.now(),
            mono: self.clock.monotonic(),
        }
    }

    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<DispenserCommand>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let fx = self.core.start(self.now());
        self.carry_out(fx).await;
        // Sleep until the cup or the button moves instead of polling them fast, where both
        // can tell; after an edge, look again once the level has had time to settle.
        let mut on_edges = self.dev.tray.edge().is_some() && self.dev.button.edge().is_some();
        let settle =
            self.dev.tray.settle().max(self.dev.button.settle()) + Duration::from_millis(1);
        let mut settled_at: Option<Duration> = None;
        loop {
            let now = self.now();
            match self.dev.tray.sample(now.mono) {
                Ok(present) => {
                    let fx = self.core.on_tray(present, now);
                    self.carry_out(fx).await;
                }
                Err(e) => super::emit(&self.events, device_fault(now.wall, e.line, e.reason)).await,
            }
            match self.dev.button.sample(now.mono) {
                Ok(pressed) => {
                    let fx = self.core.on_button(pressed, now);
                    self.carry_out(fx).await;
                }
                Err(e) => super::emit(&self.events, device_fault(now.wall, e.line, e.reason)).await,
            }
            for light in [&mut self.dev.buzzer, &mut self.dev.led] {
                if let Err(e) = light.enforce(now.mono) {
                    let _ = self
                        .events
                        .send(device_fault(now.wall, e.line, e.reason))
                        .await;
                }
            }
            let fx = self.core.on_tick(self.now());
            self.carry_out(fx).await;
            let now = self.now();
            let mut wake = if on_edges {
                self.core.next_wake_on_edges(now)
            } else {
                self.core.next_wake(now)
            };
            if let Some(at) = settled_at.filter(|at| *at > now.mono) {
                wake = wake.min(at);
            }
            let woke = {
                let edge = next_edge(&mut self.dev.tray, &mut self.dev.button, on_edges);
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => Woke::Shutdown,
                    Some(cmd) = commands.recv() => Woke::Command(cmd),
                    edge = edge => Woke::Edge(edge),
                    _ = clock::sleep_until(&*self.clock, wake) => Woke::Timer,
                }
            };
            match woke {
                Woke::Shutdown => break,
                Woke::Command(cmd) => {
                    let token = cmd.reply.map(|r| {
                        self.next_token += 1;
                        self.waiting.insert(self.next_token, r);
                        self.next_token
                    });
                    let fx = self.core.on_command(cmd.command, token, self.now());
                    self.carry_out(fx).await;
                }
                Woke::Edge(Ok(())) => settled_at = Some(self.clock.monotonic() + settle),
                Woke::Edge(Err(e)) => {
                    // A line that cannot tell its edges is polled again, as before.
                    on_edges = false;
                    let now = self.now();
                    super::emit(&self.events, device_fault(now.wall, e.line, e.reason)).await;
                }
                Woke::Timer => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        let now = self.now();
        let released = self
            .carousel
            .call(|c| c.release())
            .await
            .unwrap_or(Err(CarouselError::Lost));
        if let Err(e) = released {
            super::emit(
                &self.events,
                device_fault(now.wall, "carousel", e.to_string()),
            )
            .await;
        }
        for light in [&mut self.dev.buzzer, &mut self.dev.led] {
            if let Err(e) = light.set(false, now.mono) {
                let _ = self
                    .events
                    .send(device_fault(now.wall, e.line, e.reason))
                    .await;
            }
        }
    }

    /// Carries out the core's effects in order; what the carousel reports goes back to the
    /// core, whose further effects follow.
    async fn carry_out(&mut self, fx: Vec<Effect>) {
        let mut queue: VecDeque<Effect> = fx.into();
        while let Some(effect) = queue.pop_front() {
            match effect {
                Effect::Emit(e) => super::emit(&self.events, e).await,
                // One request at a time is enough (the core asks once until answered); a full
                // channel already holds one.
                Effect::LoadHistory => {
                    let _ = self.history.try_send(());
                }
                Effect::Lights { buzzer, led } => {
                    let now = self.now();
                    for (light, on) in [(&mut self.dev.buzzer, buzzer), (&mut self.dev.led, led)] {
                        if let Err(e) = light.set(on, now.mono) {
                            let _ = self
                                .events
                                .send(device_fault(now.wall, e.line, e.reason))
                                .await;
                        }
                    }
                }
                Effect::Reply { token, answer } => {
                    if let Some(r) = self.waiting.remove(&token) {
                        let _ = r.send(answer);
                    }
                }
                Effect::Home => {
                    let result = self
                        .carousel
                        .call(|c| c.home())
                        .await
                        .unwrap_or(Err(CarouselError::Lost));
                    queue.extend(self.core.on_homed(result, self.now()));
                }
                Effect::Turn {
                    slot,
                    units,
                    durable_first,
                } => {
                    let turned = if durable_first && !durable(&self.events).await {
                        Turned::NotDurable
                    } else {
                        Turned::Done(
                            self.carousel
                                .call(move |c| c.dispense(slot, units))
                                .await
                                .unwrap_or(Err(CarouselError::Lost)),
                        )
                    };
                    queue.extend(self.core.on_drop(turned, self.now()));
                }
            }
        }
    }
}

/// What ended the dispenser task's wait.
enum Woke {
    Shutdown,
    Command(DispenserCommand),
    /// The cup or the button moved (or could not say).
    Edge(Result<(), LineError>),
    Timer,
}

/// The next edge of either input; never, when not waiting on edges.
async fn next_edge(
    tray: &mut Box<dyn BinarySensor>,
    button: &mut Box<dyn BinarySensor>,
    on_edges: bool,
) -> Result<(), LineError> {
    if !on_edges {
        return std::future::pending().await;
    }
    match (tray.edge(), button.edge()) {
        (Some(a), Some(b)) => tokio::select! {
            r = a => r,
            r = b => r,
        },
        (Some(a), None) | (None, Some(a)) => a.await,
        (None, None) => std::future::pending().await,
    }
}

/// Waits until everything emitted so far is durable. Durability is a matter of real disk I/O,
/// so the limit is in the runtime's time, not the (possibly accelerated) appliance clock: at
/// 3600× a simulated 30 s is 8 ms of I/O.
async fn durable(events: &mpsc::Sender<Event>) -> bool {
    let token = crate::events::Durable::default();
    super::emit(
        events,
        Event::Barrier {
            token: token.clone(),
        },
    )
    .await;
    tokio::select! {
        biased;
        _ = token.0.notified() => true,
        _ = tokio::time::sleep(DURABLE_WITHIN) => false,
    }
}
