//! TMP117 buffered probe (±0.1 °C), through the `tmp117` crate.
//!
//! We run one-shot conversions with 8-sample averaging: the probe sits in glycol, so there is
//! nothing to gain from continuous mode, and a one-shot leaves the sensor shut down (no self-heating)
//! between the controller's reads.

use crate::units::Celsius;
use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::{I2c, SevenBitAddress};
use tmp117::register::Average;

/// The TMP117's device-id register value (register 0x0F, low 12 bits).
pub const DEVICE_ID: u16 = 0x117;

/// Why a TMP117 read gave no temperature. Bus errors keep the HAL's error so its `ErrorKind`
/// (NACK: probe missing; arbitration, bus: wiring) can be told apart.
pub type Error<E> = tmp117::error::Error<E>;

/// One TMP117 on an I²C bus.
pub struct Tmp117Probe<I2C, E, D> {
    dev: tmp117::Tmp117<I2C, E, D>,
}

impl<I2C, E, D> Tmp117Probe<I2C, E, D>
where
    I2C: I2c<SevenBitAddress, Error = E>,
    E: embedded_hal::i2c::Error,
    D: DelayNs,
{
    /// Takes the bus at `address` (0x48–0x4B).
    pub fn new(i2c: I2C, address: u8, delay: D) -> Self {
        Self {
            dev: tmp117::Tmp117::new(i2c, address, delay),
        }
    }

    /// Checks that the device answering is a TMP117.
    pub fn is_tmp117(&mut self) -> Result<bool, Error<E>> {
        Ok(self.dev.id()?.device & 0x0FFF == DEVICE_ID)
    }

    /// Runs one averaged conversion (about 125 ms) and returns the temperature.
    pub fn read(&mut self) -> Result<Celsius, Error<E>> {
        self.dev
            .oneshot(Average::Avg8)
            .map(|c| Celsius(f64::from(c)))
    }
}

/// Encodes a temperature as the TMP117 result register does (7.8125 m°C per LSB, two's complement).
pub fn encode_temperature(c: f64) -> u16 {
    let lsb = (c / 0.0078125)
        .round()
        .clamp(f64::from(i16::MIN), f64::from(i16::MAX));
    (lsb as i16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};

    const ADDR: u8 = 0x48;

    #[test]
    fn oneshot_read_configures_waits_and_converts() {
        // Power-on configuration 0x0220: continuous, 8 averages, 1 s cycle.
        let expectations = [
            Transaction::write_read(ADDR, vec![0x01], vec![0x02, 0x20]),
            // mode = one-shot (bits 11:10 = 11), averaging 8, alert active low.
            Transaction::write(ADDR, vec![0x01, 0x0E, 0x20]),
            // data-ready (bit 13) already set.
            Transaction::write_read(ADDR, vec![0x01], vec![0x2E, 0x20]),
            // 5.0 °C = 640 LSB = 0x0280.
            Transaction::write_read(ADDR, vec![0x00], vec![0x02, 0x80]),
        ];
        let mut i2c = Mock::new(&expectations);
        let mut probe = Tmp117Probe::new(i2c.clone(), ADDR, NoopDelay::new());
        assert_eq!(probe.read().unwrap(), Celsius(5.0));
        i2c.done();
    }

    #[test]
    fn negative_temperatures_are_twos_complement() {
        let expectations = [
            Transaction::write_read(ADDR, vec![0x01], vec![0x02, 0x20]),
            Transaction::write(ADDR, vec![0x01, 0x0E, 0x20]),
            Transaction::write_read(ADDR, vec![0x01], vec![0x2E, 0x20]),
            // -0.5 °C = -64 LSB = 0xFFC0.
            Transaction::write_read(ADDR, vec![0x00], vec![0xFF, 0xC0]),
        ];
        let mut i2c = Mock::new(&expectations);
        let mut probe = Tmp117Probe::new(i2c.clone(), ADDR, NoopDelay::new());
        assert_eq!(probe.read().unwrap(), Celsius(-0.5));
        i2c.done();
    }

    #[test]
    fn missing_probe_is_a_bus_error_not_a_temperature() {
        use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};
        let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
        let expectations =
            [Transaction::write_read(ADDR, vec![0x01], vec![0x00, 0x00]).with_error(nack)];
        let mut i2c = Mock::new(&expectations);
        let mut probe = Tmp117Probe::new(i2c.clone(), ADDR, NoopDelay::new());
        assert!(matches!(probe.read(), Err(tmp117::error::Error::Bus(_))));
        i2c.done();
    }

    #[test]
    fn device_id_is_checked() {
        let expectations = [Transaction::write_read(ADDR, vec![0x0F], vec![0x01, 0x17])];
        let mut i2c = Mock::new(&expectations);
        let mut probe = Tmp117Probe::new(i2c.clone(), ADDR, NoopDelay::new());
        assert!(probe.is_tmp117().unwrap());
        i2c.done();
    }

    #[test]
    fn encoding_matches_the_register_format() {
        assert_eq!(encode_temperature(5.0), 0x0280);
        assert_eq!(encode_temperature(-0.5), 0xFFC0);
        assert_eq!(encode_temperature(0.0), 0);
    }
}
