//! DS18B20 air probe, read through the Linux `w1_therm` sysfs file.
//!
//! The kernel does the 1-Wire timing and the CRC; what reaches us is text such as
//!
//! ```text
//! 50 05 4b 46 7f ff 0c 10 1c : crc=1c YES
//! 50 05 4b 46 7f ff 0c 10 1c t=85000
//! ```
//!
//! Two values are signatures, not temperatures: 85.000 °C is the scratchpad's power-on reset value
//! (read before any conversion finished) and 127.937 °C (0x07FF) is what a failed conversion leaves.
//! Both are reported as errors so no fridge logic can ever mistake them for heat.

use crate::units::Celsius;
use std::path::PathBuf;
use thiserror::Error;

/// Where the `w1_slave` text comes from: the kernel's file on a Pi, the thermal model in simulation.
pub trait W1Source {
    /// Reads the whole `w1_slave` text once (each read triggers one conversion in the kernel).
    fn read_slave(&mut self) -> std::io::Result<String>;
}

/// The kernel's sysfs file for one sensor.
#[derive(Debug, Clone)]
pub struct SysfsW1 {
    path: PathBuf,
}

impl SysfsW1 {
    /// `dir/<id>/w1_slave`, typically `/sys/bus/w1/devices/28-…/w1_slave`.
    pub fn new(dir: impl Into<PathBuf>, id: &str) -> Self {
        let mut path = dir.into();
        path.push(id);
        path.push("w1_slave");
        Self { path }
    }
}

impl W1Source for SysfsW1 {
    fn read_slave(&mut self) -> std::io::Result<String> {
        std::fs::read_to_string(&self.path)
    }
}

/// Why a DS18B20 read gave no temperature.
#[derive(Debug, Error)]
pub enum Error {
    /// The sysfs file could not be read (sensor gone from the bus, overlay not loaded).
    #[error("cannot read w1 file: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel reported a CRC mismatch (`crc=.. NO`): noise or a loose wire.
    #[error("CRC check failed")]
    Crc,
    /// 85.000 °C: the power-on value of the scratchpad, no conversion has completed.
    #[error("power-on reset value 85.000 °C (no conversion yet)")]
    PowerOnValue,
    /// 127.937 °C: the conversion failed (often a parasite-power problem).
    #[error("failed conversion value 127.937 °C")]
    ConversionFailed,
    /// The text is not in the `w1_therm` format.
    #[error("unreadable w1 text: {0:?}")]
    Malformed(String),
}

/// One DS18B20, owning its source.
#[derive(Debug)]
pub struct Ds18b20<S> {
    source: S,
}

impl<S: W1Source> Ds18b20<S> {
    /// Takes ownership of the source.
    pub fn new(source: S) -> Self {
        Self { source }
    }

    /// Runs one conversion and returns the temperature.
    pub fn read(&mut self) -> Result<Celsius, Error> {
        let text = self.source.read_slave()?;
        parse_w1_slave(&text)
    }

    /// Gives the source back.
    pub fn destroy(self) -> S {
        self.source
    }
}

/// Parses the two-line `w1_slave` text.
pub fn parse_w1_slave(text: &str) -> Result<Celsius, Error> {
    let mut lines = text.lines();
    let (Some(first), Some(second)) = (lines.next(), lines.next()) else {
        return Err(Error::Malformed(text.to_string()));
    };
    let verdict = first
        .rsplit_once("crc=")
        .map(|(_, v)| v.split_whitespace().nth(1).unwrap_or(""))
        .ok_or_else(|| Error::Malformed(first.to_string()))?;
    match verdict {
        "YES" => {}
        "NO" => return Err(Error::Crc),
        _ => return Err(Error::Malformed(first.to_string())),
    }
    let milli: i32 = second
        .rsplit_once("t=")
        .and_then(|(_, t)| t.trim().parse().ok())
        .ok_or_else(|| Error::Malformed(second.to_string()))?;
    match milli {
        85_000 => Err(Error::PowerOnValue),
        127_937 => Err(Error::ConversionFailed),
        m => Ok(Celsius(f64::from(m) / 1000.0)),
    }
}

/// Dallas/Maxim CRC-8 (polynomial x⁸+x⁵+x⁴+1), as the sensor computes it over the scratchpad.
pub fn crc8(bytes: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &byte in bytes {
        let mut b = byte;
        for _ in 0..8 {
            let mix = (crc ^ b) & 1;
            crc >>= 1;
            if mix != 0 {
                crc ^= 0x8C;
            }
            b >>= 1;
        }
    }
    crc
}

/// Renders the text the kernel would show for a raw 12-bit reading (used by the simulated board).
pub fn render_w1_slave(raw: i16, crc_ok: bool) -> String {
    let [lsb, msb] = raw.to_le_bytes();
    let mut pad = [lsb, msb, 0x4b, 0x46, 0x7f, 0xff, 0x0c, 0x10, 0];
    pad[8] = crc8(&pad[..8]);
    if !crc_ok {
        pad[8] ^= 0x5a;
    }
    let hex: Vec<String> = pad.iter().map(|b| format!("{b:02x}")).collect();
    let hex = hex.join(" ");
    let verdict = if crc_ok { "YES" } else { "NO" };
    // The kernel prints the value converted with 1/16 °C per LSB, in millidegrees, truncated.
    let milli = i32::from(raw) * 1000 / 16;
    format!("{hex} : crc={:02x} {verdict}\n{hex} t={milli}\n", pad[8])
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Text(&'static str);
    impl W1Source for Text {
        fn read_slave(&mut self) -> std::io::Result<String> {
            Ok(self.0.to_string())
        }
    }

    #[test]
    fn reads_a_valid_temperature() {
        let mut p = Ds18b20::new(Text(
            "50 00 4b 46 7f ff 10 10 e0 : crc=e0 YES\n50 00 4b 46 7f ff 10 10 e0 t=5000\n",
        ));
        assert_eq!(p.read().unwrap(), Celsius(5.0));
    }

    #[test]
    fn reads_negative_temperatures() {
        assert_eq!(
            parse_w1_slave(
                "f8 ff 4b 46 7f ff 08 10 b4 : crc=b4 YES\nf8 ff 4b 46 7f ff 08 10 b4 t=-500"
            )
            .unwrap(),
            Celsius(-0.5)
        );
    }

    #[test]
    fn crc_no_is_rejected() {
        let e = parse_w1_slave(
            "50 05 4b 46 7f ff 0c 10 1c : crc=1d NO\n50 05 4b 46 7f ff 0c 10 1c t=23125",
        );
        assert!(matches!(e, Err(Error::Crc)));
    }

    #[test]
    fn power_on_85_is_not_a_temperature() {
        let e = parse_w1_slave(
            "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000",
        );
        assert!(matches!(e, Err(Error::PowerOnValue)));
    }

    #[test]
    fn failed_conversion_127_937_is_not_a_temperature() {
        let e = parse_w1_slave(
            "ff 07 4b 46 7f ff 01 10 2d : crc=2d YES\nff 07 4b 46 7f ff 01 10 2d t=127937",
        );
        assert!(matches!(e, Err(Error::ConversionFailed)));
    }

    #[test]
    fn truncated_text_is_malformed() {
        assert!(matches!(parse_w1_slave(""), Err(Error::Malformed(_))));
        assert!(matches!(
            parse_w1_slave("50 05 : crc=1c YES\n50 05 t="),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn rendered_text_round_trips_with_a_valid_crc() {
        for raw in [-880i16, -8, 0, 80, 1365, 0x7FF] {
            let text = render_w1_slave(raw, true);
            match parse_w1_slave(&text) {
                Ok(c) => assert!((c.0 - f64::from(raw) / 16.0).abs() < 0.001),
                Err(Error::ConversionFailed) => assert_eq!(raw, 0x7FF),
                Err(e) => panic!("{e}"),
            }
        }
        assert!(matches!(
            parse_w1_slave(&render_w1_slave(80, false)),
            Err(Error::Crc)
        ));
    }

    #[test]
    fn crc8_matches_the_datasheet_example() {
        // ROM code example from Maxim application note 27: 02 1C B8 01 00 00 00 -> A2.
        assert_eq!(crc8(&[0x02, 0x1C, 0xB8, 0x01, 0x00, 0x00, 0x00]), 0xA2);
    }
}
