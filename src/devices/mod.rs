//! Devices: what the controller sees of the hardware, as small object-safe traits.
//!
//! Both boards (the Raspberry Pi and the simulated one) build these from the same drivers, so the
//! controller never knows which one it runs on. Device errors are plain enums the domain can act on
//! (a probe fault is a fact to record, not a crash).

pub mod carousel;

use crate::units::Celsius;
use std::time::Duration;
use thiserror::Error;

pub use carousel::{Carousel, CarouselError, DropReport};

/// The two temperature probes of the fridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// TMP117 in the glycol vial: the control and record probe.
    Vial,
    /// DS18B20 in the air.
    Air,
}

/// Why a probe gave no usable temperature. Each kind is recorded as a probe fault, never as a
/// temperature excursion.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProbeError {
    /// The probe did not answer (I²C NACK, w1 file missing): disconnected or dead.
    #[error("probe not responding: {0}")]
    NotResponding(String),
    /// The bus answered but the transfer failed (CRC, arbitration, timeout).
    #[error("bus or CRC error: {0}")]
    Bus(String),
    /// DS18B20 power-on value 85.000 °C.
    #[error("power-on reset value 85.000 °C")]
    PowerOnValue,
    /// DS18B20 failed-conversion value 127.937 °C.
    #[error("failed conversion value 127.937 °C")]
    ConversionFailed,
    /// The answer could not be understood.
    #[error("unreadable answer: {0}")]
    Malformed(String),
}

/// A temperature probe.
pub trait Thermometer: Send {
    /// Takes one reading.
    fn read(&mut self) -> Result<Celsius, ProbeError>;
}

/// An output or input line could not be driven or read.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{line}: {reason}")]
pub struct LineError {
    /// Which line (for the operator: the profile key).
    pub line: &'static str,
    /// The HAL's explanation.
    pub reason: String,
}

/// What happened to a compressor command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressorState {
    /// Running.
    On,
    /// Stopped.
    Off,
    /// Stopped by the relay itself: it reached its maximum on-time while the controller still
    /// asked for cooling. The last line of defence acted, so something above it is wrong.
    Tripped,
}

/// The compressor relay, with its protective times enforced below the controller.
pub trait Compressor: Send {
    /// Asks for the compressor on or off at monotonic time `at`; returns the state it is in after.
    fn command(&mut self, on: bool, at: Duration) -> Result<CompressorState, LineError>;
    /// Stops the compressor now (shutdown, signal, fatal fault).
    fn safe(&mut self, at: Duration) -> Result<(), LineError>;
}

/// A debounced two-state sensor (door, mains, tray, button).
pub trait BinarySensor: Send {
    /// The debounced state at monotonic time `at` (true: active).
    fn sample(&mut self, at: Duration) -> Result<bool, LineError>;
    /// The line's next edge, for a task that would rather sleep than poll; sample at it and
    /// again [`BinarySensor::settle`] later. None: this line cannot tell, so poll it.
    fn edge(&mut self) -> Option<EdgeFuture<'_>> {
        None
    }
    /// How long after an edge the level is believed (its debounce time).
    fn settle(&self) -> Duration {
        Duration::ZERO
    }
}

/// A sensor's next edge (see [`BinarySensor::edge`]).
pub type EdgeFuture<'a> = crate::drivers::input::EdgeFuture<'a, LineError>;

/// A buzzer or LED with a maximum on-time.
pub trait Annunciator: Send {
    /// Switches on or off.
    fn set(&mut self, on: bool, at: Duration) -> Result<(), LineError>;
    /// Turns off if on for the maximum on-time.
    fn enforce(&mut self, at: Duration) -> Result<(), LineError>;
}

/// Everything the fridge needs, owned by the fridge task.
pub struct FridgeDevices {
    /// TMP117 in the glycol vial: the control and record probe.
    pub vial: Box<dyn Thermometer>,
    /// DS18B20 in the air: the fast, cross-checking probe.
    pub air: Box<dyn Thermometer>,
    /// Compressor relay.
    pub compressor: Box<dyn Compressor>,
    /// Door switch (active: open).
    pub door: Box<dyn BinarySensor>,
    /// Mains sense (active: mains present).
    pub mains: Box<dyn BinarySensor>,
}

/// Everything the dispenser needs, owned by the dispenser task.
pub struct DispenserDevices {
    /// Carousel with its home sensor and the chute's break-beam.
    pub carousel: Box<dyn Carousel>,
    /// Cup sensor (active: cup in place).
    pub tray: Box<dyn BinarySensor>,
    /// "Taken" button (active: pressed).
    pub button: Box<dyn BinarySensor>,
    /// Reminder buzzer.
    pub buzzer: Box<dyn Annunciator>,
    /// Reminder LED.
    pub led: Box<dyn Annunciator>,
}

/// Adapters from drivers to device traits, shared by both boards.
pub mod adapt {
    use super::*;
    use crate::drivers::input::{DebouncedInput, EdgeWait};
    use crate::drivers::{ds18b20, indicator::Indicator, relay, tmp117};
    use embedded_hal::digital::{InputPin, OutputPin};
    use embedded_hal::i2c::{ErrorKind, I2c};

    fn line_err(line: &'static str) -> impl Fn(String) -> LineError {
        move |reason| LineError { line, reason }
    }

    impl<S: ds18b20::W1Source + Send> Thermometer for ds18b20::Ds18b20<S> {
        fn read(&mut self) -> Result<Celsius, ProbeError> {
            ds18b20::Ds18b20::read(self).map_err(|e| match e {
                ds18b20::Error::Io(io) => ProbeError::NotResponding(io.to_string()),
                ds18b20::Error::Crc => ProbeError::Bus("CRC check failed".into()),
                ds18b20::Error::PowerOnValue => ProbeError::PowerOnValue,
                ds18b20::Error::ConversionFailed => ProbeError::ConversionFailed,
                ds18b20::Error::Malformed(t) => ProbeError::Malformed(t),
            })
        }
    }

    impl<I, E, D> Thermometer for tmp117::Tmp117Probe<I, E, D>
    where
        I: I2c<Error = E> + Send,
        E: embedded_hal::i2c::Error + Send,
        D: embedded_hal::delay::DelayNs + Send,
    {
        fn read(&mut self) -> Result<Celsius, ProbeError> {
            tmp117::Tmp117Probe::read(self).map_err(|e| match e {
                ::tmp117::error::Error::Bus(b) => match b.kind() {
                    ErrorKind::NoAcknowledge(_) => {
                        ProbeError::NotResponding(format!("I2C NACK ({:?})", b.kind()))
                    }
                    kind => ProbeError::Bus(format!("{kind:?}")),
                },
                ::tmp117::error::Error::Timeout => ProbeError::Bus("conversion timed out".into()),
                other => ProbeError::Malformed(format!("{other:?}")),
            })
        }
    }

    /// The compressor relay as a device.
    pub struct RelayCompressor<P: OutputPin>(pub relay::Relay<P>);

    impl<P: OutputPin + Send> Compressor for RelayCompressor<P> {
        fn command(&mut self, on: bool, at: Duration) -> Result<CompressorState, LineError> {
            let outcome = self
                .0
                .command(on, at)
                .map_err(|e| line_err("fridge.compressor")(format!("{e:?}")))?;
            if on && outcome == relay::RelayOutcome::MaxOnTimeReached {
                return Ok(CompressorState::Tripped);
            }
            Ok(if self.0.is_on() {
                CompressorState::On
            } else {
                CompressorState::Off
            })
        }
        fn safe(&mut self, at: Duration) -> Result<(), LineError> {
            self.0
                .safe(at)
                .map_err(|e| line_err("fridge.compressor")(format!("{e:?}")))
        }
    }

    /// A debounced input that also tells its edges, as a device named by its profile key.
    pub struct EdgeSensor<P: EdgeWait>(pub DebouncedInput<P>, pub &'static str);

    impl<P: EdgeWait + Send> BinarySensor for EdgeSensor<P>
    where
        P::Error: Send,
    {
        fn sample(&mut self, at: Duration) -> Result<bool, LineError> {
            self.0
                .sample(at)
                .map_err(|e| line_err(self.1)(format!("{e:?}")))
        }
        fn edge(&mut self) -> Option<EdgeFuture<'_>> {
            let name = self.1;
            let edge = self.0.edge();
            Some(Box::pin(async move {
                edge.await.map_err(|e| line_err(name)(format!("{e:?}")))
            }))
        }
        fn settle(&self) -> Duration {
            self.0.debounce()
        }
    }

    /// A debounced input as a device, named by its profile key.
    pub struct Sensor<P: InputPin>(pub DebouncedInput<P>, pub &'static str);

    impl<P: InputPin + Send> BinarySensor for Sensor<P> {
        fn sample(&mut self, at: Duration) -> Result<bool, LineError> {
            self.0
                .sample(at)
                .map_err(|e| line_err(self.1)(format!("{e:?}")))
        }
    }

    /// A buzzer or LED as a device, named by its profile key.
    pub struct Light<P: OutputPin>(pub Indicator<P>, pub &'static str);

    impl<P: OutputPin + Send> Annunciator for Light<P> {
        fn set(&mut self, on: bool, at: Duration) -> Result<(), LineError> {
            self.0
                .set(on, at)
                .map_err(|e| line_err(self.1)(format!("{e:?}")))
        }
        fn enforce(&mut self, at: Duration) -> Result<(), LineError> {
            self.0
                .enforce(at)
                .map(|_| ())
                .map_err(|e| line_err(self.1)(format!("{e:?}")))
        }
    }
}
