//! The Raspberry Pi board (cargo feature `rpi`): the same drivers as the simulated board, over
//! rppal's embedded-hal 1.0 implementations. This is the only module that names rppal types, so
//! `linux-embedded-hal` can replace rppal (unmaintained since 2025-07) here alone.

use crate::config::{BoardKind, BoardProfile, InputSpec, Level, MotorWiring, OutputSpec, Pull};
use crate::devices::adapt::{EdgeSensor, Light, RelayCompressor, Sensor};
use crate::devices::carousel::CarouselMechanism;
use crate::devices::{DispenserDevices, FridgeDevices};
use crate::drivers::ds18b20::{Ds18b20, SysfsW1};
use crate::drivers::indicator::Indicator;
use crate::drivers::input::{wait_for_level, DebouncedInput, EdgeFuture, EdgeWait, Line};
use crate::drivers::relay::Relay;
use crate::drivers::stepper::{StepDirStepper, Uln2003Stepper};
use crate::drivers::tmp117::Tmp117Probe;
use embedded_hal::digital::{ErrorType, InputPin as _};
use embedded_hal_async::digital::Wait;
use rppal::gpio::{Gpio, InputPin, OutputPin, Trigger};
use rppal::hal::Delay;
use rppal::i2c::I2c;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::Notify;

/// The Pi's peripherals could not be opened.
#[derive(Debug, Error)]
pub enum RpiBoardError {
    /// The profile is not for a Raspberry Pi.
    #[error("profile {0:?} is not a Raspberry Pi board (board.kind must be \"rpi\")")]
    NotRpi(String),
    /// GPIO could not be opened or a line claimed (not a Pi, no access to /dev/gpiomem, line busy).
    #[error("GPIO {pin} ({key}): {source}")]
    Gpio {
        /// BCM line.
        pin: u8,
        /// Profile key.
        key: &'static str,
        /// rppal's reason.
        source: rppal::gpio::Error,
    },
    /// GPIO as a whole is unavailable.
    #[error("GPIO unavailable (is this a Raspberry Pi, and is the user in group gpio?): {0}")]
    NoGpio(rppal::gpio::Error),
    /// The I²C bus could not be opened (overlay not enabled, user not in group i2c).
    #[error("I2C bus {bus}: {source} (enable dtparam=i2c_arm=on; see hw/WIRING.md)")]
    I2c {
        /// Bus number.
        bus: u8,
        /// rppal's reason.
        source: rppal::i2c::Error,
    },
    /// A driver could not put its line in the safe state.
    #[error("{0} could not be put in its safe state")]
    Init(&'static str),
}

/// Claims an output already at its inactive level, so an active-low relay does not click on
/// for the instant before its driver applies the safe state.
fn output(
    gpio: &Gpio,
    pin: u8,
    key: &'static str,
    active: Level,
) -> Result<OutputPin, RpiBoardError> {
    gpio.get(pin)
        .map(|p| match active {
            Level::High => p.into_output_low(),
            Level::Low => p.into_output_high(),
        })
        .map_err(|source| RpiBoardError::Gpio { pin, key, source })
}

fn input(gpio: &Gpio, spec: &InputSpec, key: &'static str) -> Result<InputPin, RpiBoardError> {
    let pin = *spec.pin.get_ref();
    let p = gpio
        .get(pin)
        .map_err(|source| RpiBoardError::Gpio { pin, key, source })?;
    Ok(match spec.pull {
        Pull::None => p.into_input(),
        Pull::Up => p.into_input_pullup(),
        Pull::Down => p.into_input_pulldown(),
    })
}

/// A GPIO input that tells its edges: rppal's interrupt thread wakes whoever waits, so the
/// dispenser sleeps instead of polling the cup and the button.
pub struct EdgeInput {
    pin: InputPin,
    edges: Arc<Notify>,
}

impl EdgeInput {
    fn new(mut pin: InputPin, key: &'static str) -> Result<Self, RpiBoardError> {
        let edges = Arc::new(Notify::new());
        let tell = edges.clone();
        let number = pin.pin();
        pin.set_async_interrupt(Trigger::Both, None, move |_| tell.notify_waiters())
            .map_err(|source| RpiBoardError::Gpio {
                pin: number,
                key,
                source,
            })?;
        Ok(Self { pin, edges })
    }
}

impl ErrorType for EdgeInput {
    type Error = Infallible;
}

impl embedded_hal::digital::InputPin for EdgeInput {
    fn is_high(&mut self) -> Result<bool, Infallible> {
        Ok(self.pin.is_high())
    }
    fn is_low(&mut self) -> Result<bool, Infallible> {
        Ok(self.pin.is_low())
    }
}

impl Wait for EdgeInput {
    async fn wait_for_high(&mut self) -> Result<(), Infallible> {
        wait_for_level(self, true).await
    }
    async fn wait_for_low(&mut self) -> Result<(), Infallible> {
        wait_for_level(self, false).await
    }
    async fn wait_for_rising_edge(&mut self) -> Result<(), Infallible> {
        wait_for_level(self, false).await?;
        wait_for_level(self, true).await
    }
    async fn wait_for_falling_edge(&mut self) -> Result<(), Infallible> {
        wait_for_level(self, true).await?;
        wait_for_level(self, false).await
    }
    /// Returns once the level differs from where it started (an interrupt that bounced back
    /// before the level was read again is waited past).
    async fn wait_for_any_edge(&mut self) -> Result<(), Infallible> {
        let start = self.is_high()?;
        let edges = self.edges.clone();
        loop {
            let changed = edges.notified();
            tokio::pin!(changed);
            // Registered before the level is read again, so an edge in between is not lost.
            changed.as_mut().enable();
            if self.is_high()? != start {
                return Ok(());
            }
            changed.await;
        }
    }
}

impl EdgeWait for EdgeInput {
    fn any_edge(&mut self) -> EdgeFuture<'_, Infallible> {
        Box::pin(self.wait_for_any_edge())
    }
}

fn edge_sensor(
    gpio: &Gpio,
    spec: &InputSpec,
    key: &'static str,
) -> Result<EdgeSensor<EdgeInput>, RpiBoardError> {
    let pin = EdgeInput::new(input(gpio, spec, key)?, key)?;
    Ok(EdgeSensor(
        DebouncedInput::new(pin, spec.active, spec.debounce()),
        key,
    ))
}

fn sensor(
    gpio: &Gpio,
    spec: &InputSpec,
    key: &'static str,
) -> Result<Sensor<InputPin>, RpiBoardError> {
    Ok(Sensor(
        DebouncedInput::new(input(gpio, spec, key)?, spec.active, spec.debounce()),
        key,
    ))
}

fn light(
    gpio: &Gpio,
    spec: &OutputSpec,
    key: &'static str,
) -> Result<Light<OutputPin>, RpiBoardError> {
    let pin = output(gpio, *spec.pin.get_ref(), key, spec.active)?;
    let ind = Indicator::new(
        pin,
        spec.active,
        spec.max_on.unwrap_or(Duration::from_secs(60)),
    )
    .map_err(|_| RpiBoardError::Init(key))?;
    Ok(Light(ind, key))
}

/// Builds the fridge and dispenser devices on a Raspberry Pi; `at` is the monotonic time now.
pub fn build(
    profile: &BoardProfile,
    at: Duration,
) -> Result<(FridgeDevices, DispenserDevices), RpiBoardError> {
    if profile.board.kind != BoardKind::Rpi {
        return Err(RpiBoardError::NotRpi(profile.board.name.clone()));
    }
    let gpio = Gpio::new().map_err(RpiBoardError::NoGpio)?;
    let f = &profile.fridge;
    let bus = f.vial_probe.bus;
    let i2c = I2c::with_bus(bus).map_err(|source| RpiBoardError::I2c { bus, source })?;
    let addr = *f.vial_probe.address.get_ref();
    let relay = Relay::new(
        output(
            &gpio,
            *f.compressor.pin.get_ref(),
            "fridge.compressor",
            f.compressor.active,
        )?,
        f.compressor.active,
        super::compressor_timings(profile),
        at,
    )
    .map_err(|_| RpiBoardError::Init("fridge.compressor"))?;
    let fridge = FridgeDevices {
        vial: Box::new(Tmp117Probe::new(i2c, addr, Delay::new())),
        air: Box::new(Ds18b20::new(SysfsW1::new(
            f.air_probe.dir.clone(),
            f.air_probe.id.get_ref(),
        ))),
        compressor: Box::new(RelayCompressor(relay)),
        door: Box::new(sensor(&gpio, &f.door, "fridge.door")?),
        mains: Box::new(sensor(&gpio, &f.power_good, "fridge.power_good")?),
    };

    let c = &profile.carousel;
    let geometry = super::carousel_geometry(c);
    let home = Line::new(input(&gpio, &c.home, "carousel.home")?, c.home.active);
    let d = &profile.dispenser;
    let beam = Line::new(input(&gpio, &d.beam, "dispenser.beam")?, d.beam.active);
    let carousel: Box<dyn crate::devices::Carousel> = match &c.motor {
        MotorWiring::Uln2003 { coils } => {
            let key = "carousel.motor.uln2003.coils";
            let stepper = Uln2003Stepper::new(
                output(&gpio, *coils[0].get_ref(), key, Level::High)?,
                output(&gpio, *coils[1].get_ref(), key, Level::High)?,
                output(&gpio, *coils[2].get_ref(), key, Level::High)?,
                output(&gpio, *coils[3].get_ref(), key, Level::High)?,
            )
            .map_err(|_| RpiBoardError::Init("carousel motor"))?;
            Box::new(CarouselMechanism::new(
                stepper,
                home,
                beam,
                Delay::new(),
                geometry,
            ))
        }
        MotorWiring::StepDir { step, dir, enable } => {
            let enable = enable
                .as_ref()
                .map(|e| {
                    output(
                        &gpio,
                        *e.get_ref(),
                        "carousel.motor.step_dir.enable",
                        Level::Low,
                    )
                })
                .transpose()?;
            let stepper = StepDirStepper::new(
                output(
                    &gpio,
                    *step.get_ref(),
                    "carousel.motor.step_dir.step",
                    Level::High,
                )?,
                output(
                    &gpio,
                    *dir.get_ref(),
                    "carousel.motor.step_dir.dir",
                    Level::High,
                )?,
                enable,
                Delay::new(),
            )
            .map_err(|_| RpiBoardError::Init("carousel motor"))?;
            Box::new(CarouselMechanism::new(
                stepper,
                home,
                beam,
                Delay::new(),
                geometry,
            ))
        }
    };
    let dispenser = DispenserDevices {
        carousel,
        tray: Box::new(edge_sensor(&gpio, &d.tray, "dispenser.tray")?),
        button: Box::new(edge_sensor(&gpio, &d.button, "dispenser.button")?),
        buzzer: Box::new(light(&gpio, &d.buzzer, "dispenser.buzzer")?),
        led: Box::new(light(&gpio, &d.led, "dispenser.led")?),
    };
    Ok((fridge, dispenser))
}
