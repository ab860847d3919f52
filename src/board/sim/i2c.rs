//! A simulated TMP117 on the I²C bus, answering register reads and writes like the real part:
//! one-shot conversions take the time the averaging setting implies, the data-ready flag is set at
//! the end of a conversion and cleared by reading the configuration or result register, and a
//! disconnected probe does not acknowledge its address.

use super::SimHandle;
use crate::devices::Probe;
use embedded_hal::i2c::{
    ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation, SevenBitAddress,
};
use std::time::Duration;

/// A bus error of the simulated I²C bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimI2cError(pub ErrorKind);

impl embedded_hal::i2c::Error for SimI2cError {
    fn kind(&self) -> ErrorKind {
        self.0
    }
}

const REG_TEMP: u8 = 0x00;
const REG_CONFIG: u8 = 0x01;
const REG_DEVICE_ID: u8 = 0x0F;
const CONFIG_RESET_VALUE: u16 = 0x0220;
const DATA_READY: u16 = 1 << 13;
const MODE_SHIFT: u16 = 10;
const MODE_MASK: u16 = 0b11 << MODE_SHIFT;
const MODE_SHUTDOWN: u16 = 0b01;
const MODE_ONESHOT: u16 = 0b11;
/// Bits the host may write (everything but reserved, reset, EEPROM busy and the flags).
const WRITABLE: u16 = 0x0FFC;

/// The simulated TMP117 and the bus it sits on.
pub struct SimI2c {
    handle: SimHandle,
    address: u8,
    pointer: u8,
    config: u16,
    result: u16,
    data_ready: bool,
    converting_until: Option<Duration>,
    registers: [u16; 16],
}

impl SimI2c {
    pub(super) fn new(handle: SimHandle, address: u8) -> Self {
        Self {
            handle,
            address,
            pointer: REG_TEMP,
            config: CONFIG_RESET_VALUE,
            result: 0x8000, // the datasheet's power-on value of the result register (-256 °C)
            data_ready: false,
            converting_until: None,
            registers: [0; 16],
        }
    }

    fn conversion_time(&self) -> Duration {
        match (self.config >> 5) & 0b11 {
            0 => Duration::from_micros(15_500),
            1 => Duration::from_millis(125),
            2 => Duration::from_millis(500),
            _ => Duration::from_millis(1000),
        }
    }

    fn finish_conversion(&mut self) {
        let mut w = self.handle.world();
        let now = w.now();
        if let Some(until) = self.converting_until {
            if now >= until {
                if let Some(c) = w.tmp117_conversion() {
                    self.result = crate::drivers::tmp117::encode_temperature(c);
                }
                self.data_ready = true;
                self.converting_until = None;
                // A one-shot conversion returns the device to shutdown.
                self.config = (self.config & !MODE_MASK) | (MODE_SHUTDOWN << MODE_SHIFT);
            }
        }
    }

    fn read_register(&mut self, reg: u8) -> u16 {
        self.finish_conversion();
        match reg {
            REG_TEMP => {
                self.data_ready = false;
                self.result
            }
            REG_CONFIG => {
                let v = self.config | if self.data_ready { DATA_READY } else { 0 };
                self.data_ready = false;
                v
            }
            REG_DEVICE_ID => 0x0117,
            r => self.registers[usize::from(r & 0x0F)],
        }
    }

    fn write_register(&mut self, reg: u8, value: u16) {
        match reg {
            REG_CONFIG => {
                if value & 0b10 != 0 {
                    // Soft reset.
                    self.config = CONFIG_RESET_VALUE;
                    self.converting_until = None;
                    return;
                }
                self.config = value & WRITABLE;
                if (self.config & MODE_MASK) >> MODE_SHIFT == MODE_ONESHOT {
                    let now = self.handle.world().now();
                    self.converting_until = Some(now + self.conversion_time());
                }
            }
            REG_TEMP | REG_DEVICE_ID => {} // read-only
            r => self.registers[usize::from(r & 0x0F)] = value,
        }
    }
}

impl ErrorType for SimI2c {
    type Error = SimI2cError;
}

impl I2c<SevenBitAddress> for SimI2c {
    fn transaction(
        &mut self,
        address: SevenBitAddress,
        operations: &mut [Operation<'_>],
    ) -> Result<(), SimI2cError> {
        let nack = SimI2cError(ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address));
        if address != self.address || !self.handle.world().probe_responds(Probe::Vial) {
            return Err(nack);
        }
        for op in operations {
            match op {
                Operation::Write(bytes) => match bytes {
                    [] => {}
                    [reg] => self.pointer = *reg,
                    [reg, hi, lo, ..] => {
                        self.pointer = *reg;
                        self.write_register(*reg, u16::from_be_bytes([*hi, *lo]));
                    }
                    [_, _] => return Err(SimI2cError(ErrorKind::Other)),
                },
                Operation::Read(buf) => {
                    let v = self.read_register(self.pointer).to_be_bytes();
                    for (i, b) in buf.iter_mut().enumerate() {
                        *b = v.get(i).copied().unwrap_or(0xFF);
                    }
                }
            }
        }
        Ok(())
    }
}
