//! The simulated board: the reference wiring over a physical model.
//!
//! It sits *below* the drivers. A simulated TMP117 answers register reads from the thermal model,
//! the DS18B20's w1 text is rendered from it, the stepper's coil lines move a simulated carousel,
//! and the break-beam fires when a unit falls from a non-empty slot. The same driver code that runs
//! on the Pi runs here. Faults (probe disconnected, stuck, noisy, power-on value; motor jam; empty
//! slot; door left open; power cut; clock jump) are injected through [`SimHandle`].

mod i2c;
mod pins;
mod w1;
pub mod world;

pub use crate::devices::Probe;
pub use world::{InLine, OutLine, ProbeFault, World};

use crate::clock::{Clock, SimClock};
use crate::config::{BoardKind, BoardProfile, MotorWiring};
use crate::devices::adapt::{EdgeSensor, Light, RelayCompressor, Sensor};
use crate::devices::carousel::CarouselMechanism;
use crate::devices::{DispenserDevices, FridgeDevices};
use crate::drivers::{
    ds18b20::Ds18b20, indicator::Indicator, input::DebouncedInput, input::Line, relay::Relay,
    stepper::StepDirStepper, stepper::Uln2003Stepper, tmp117::Tmp117Probe,
};
use pins::{SimDelay, SimInput, SimOutput};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use thiserror::Error;

/// The simulated board could not be built.
#[derive(Debug, Error)]
pub enum SimBoardError {
    /// The profile is not for the simulated board.
    #[error("profile {0:?} is not a simulated board (board.kind must be \"sim\")")]
    NotSim(String),
    /// A driver refused its lines at construction.
    #[error("simulated {0} could not be initialised")]
    Init(&'static str),
}

/// Shared access to the physical model, synchronised to the clock on every access.
#[derive(Clone)]
pub struct SimHandle {
    world: Arc<Mutex<World>>,
    clock: Arc<SimClock>,
}

impl SimHandle {
    /// Locks the model after advancing its physics to the clock's monotonic time.
    pub fn world(&self) -> MutexGuard<'_, World> {
        let mut w = match self.world.lock() {
            Ok(w) => w,
            // A panic elsewhere while holding the model cannot leave it half-updated in a way
            // that matters to a simulation; keep going.
            Err(poisoned) => poisoned.into_inner(),
        };
        w.advance_to(self.clock.monotonic());
        w
    }

    /// The clock the model follows.
    pub fn clock(&self) -> &Arc<SimClock> {
        &self.clock
    }

    /// A blocking delay: simulated time passes for the whole appliance, and the model with it.
    pub fn block_for(&self, d: Duration) {
        self.clock.advance(d);
        drop(self.world());
    }
}

/// The carousel with the simulated clock held while it moves, so a turn takes exactly the
/// simulated time its driver's delays say, however fast the simulation runs and however busy
/// the host is (see [`SimClock::hold`]). Only the sim board does this: the driver is unchanged.
struct HeldCarousel {
    inner: Box<dyn crate::devices::Carousel>,
    clock: Arc<SimClock>,
}

impl crate::devices::Carousel for HeldCarousel {
    fn home(&mut self) -> Result<u32, crate::devices::CarouselError> {
        let _hold = self.clock.hold();
        self.inner.home()
    }

    fn dispense(
        &mut self,
        slot: u8,
        units: u32,
    ) -> Result<crate::devices::DropReport, crate::devices::CarouselError> {
        let _hold = self.clock.hold();
        self.inner.dispense(slot, units)
    }

    fn release(&mut self) -> Result<(), crate::devices::CarouselError> {
        self.inner.release()
    }

    fn slots(&self) -> u8 {
        self.inner.slots()
    }

    fn slot_capacity(&self) -> u32 {
        self.inner.slot_capacity()
    }
}

/// Builds the fridge and dispenser devices of the simulated board from `profile`.
pub fn build(
    profile: &BoardProfile,
    clock: Arc<SimClock>,
) -> Result<(FridgeDevices, DispenserDevices, SimHandle), SimBoardError> {
    let model = match (&profile.sim, profile.board.kind) {
        (Some(m), BoardKind::Sim) => m.clone(),
        _ => return Err(SimBoardError::NotSim(profile.board.name.clone())),
    };
    let world = World::new(&model, profile, clock.monotonic());
    let handle = SimHandle {
        world: Arc::new(Mutex::new(world)),
        clock: clock.clone(),
    };
    let at = clock.monotonic();
    let out = |line| SimOutput::new(handle.clone(), line);
    let inp = |line| SimInput::new(handle.clone(), line);
    let f = &profile.fridge;

    let vial = Tmp117Probe::new(
        i2c::SimI2c::new(handle.clone(), *f.vial_probe.address.get_ref()),
        *f.vial_probe.address.get_ref(),
        SimDelay::new(handle.clone()),
    );
    let air = Ds18b20::new(w1::SimW1::new(handle.clone()));
    let relay = Relay::new(
        out(OutLine::Compressor),
        f.compressor.active,
        super::compressor_timings(profile),
        at,
    )
    .map_err(|_| SimBoardError::Init("compressor relay"))?;
    let fridge = FridgeDevices {
        vial: Box::new(vial),
        air: Box::new(air),
        compressor: Box::new(RelayCompressor(relay)),
        door: Box::new(Sensor(
            DebouncedInput::new(inp(InLine::Door), f.door.active, f.door.debounce()),
            "fridge.door",
        )),
        mains: Box::new(Sensor(
            DebouncedInput::new(
                inp(InLine::PowerGood),
                f.power_good.active,
                f.power_good.debounce(),
            ),
            "fridge.power_good",
        )),
    };

    let c = &profile.carousel;
    let geometry = super::carousel_geometry(c);
    let home = Line::new(inp(InLine::Home), c.home.active);
    let d = &profile.dispenser;
    let beam = Line::new(inp(InLine::Beam), d.beam.active);
    let delay = SimDelay::new(handle.clone());
    let carousel: Box<dyn crate::devices::Carousel> = match &c.motor {
        MotorWiring::Uln2003 { .. } => {
            let stepper = Uln2003Stepper::new(
                out(OutLine::Coil(0)),
                out(OutLine::Coil(1)),
                out(OutLine::Coil(2)),
                out(OutLine::Coil(3)),
            )
            .map_err(|_| SimBoardError::Init("ULN2003 stepper"))?;
            Box::new(CarouselMechanism::new(stepper, home, beam, delay, geometry))
        }
        MotorWiring::StepDir { enable, .. } => {
            let stepper = StepDirStepper::new(
                out(OutLine::Step),
                out(OutLine::Dir),
                enable.as_ref().map(|_| out(OutLine::Enable)),
                SimDelay::new(handle.clone()),
            )
            .map_err(|_| SimBoardError::Init("step/dir stepper"))?;
            Box::new(CarouselMechanism::new(stepper, home, beam, delay, geometry))
        }
    };
    let light = |line, spec: &crate::config::OutputSpec, name| -> Result<_, SimBoardError> {
        let ind = Indicator::new(
            out(line),
            spec.active,
            spec.max_on.unwrap_or(Duration::from_secs(60)),
        )
        .map_err(|_| SimBoardError::Init(name))?;
        Ok(Light(ind, name))
    };
    let dispenser = DispenserDevices {
        carousel: Box::new(HeldCarousel {
            inner: carousel,
            clock: clock.clone(),
        }),
        tray: Box::new(EdgeSensor(
            DebouncedInput::new(inp(InLine::Tray), d.tray.active, d.tray.debounce()),
            "dispenser.tray",
        )),
        button: Box::new(EdgeSensor(
            DebouncedInput::new(inp(InLine::Button), d.button.active, d.button.debounce()),
            "dispenser.button",
        )),
        buzzer: Box::new(light(OutLine::Buzzer, &d.buzzer, "dispenser.buzzer")?),
        led: Box::new(light(OutLine::Led, &d.led, "dispenser.led")?),
    };
    Ok((fridge, dispenser, handle))
}
