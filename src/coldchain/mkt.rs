//! Mean kinetic temperature (USP <1079.2>): the single temperature that would degrade a product
//! as much as the recorded history did, weighting warm periods by the Arrhenius equation.
//!
//! MKT = (ΔH/R) / −ln( (1/n) Σ exp(−ΔH/(R·Tᵢ)) ), Tᵢ in kelvin, ΔH/R = 10 000 K by default.

/// ΔH/R for MKT, in kelvin (USP: ΔH = 83.144 kJ/mol).
pub const DEFAULT_ACTIVATION_K: f64 = 10_000.0;

/// Running mean-kinetic-temperature accumulator over equally weighted readings.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MktAccumulator {
    sum: f64,
    n: u64,
}

impl MktAccumulator {
    /// Adds one reading in °C.
    pub fn add(&mut self, celsius: f64) {
        self.sum += (-DEFAULT_ACTIVATION_K / (celsius + 273.15)).exp();
        self.n += 1;
    }

    /// The MKT in °C, or None with no readings.
    pub fn value(&self) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let mean = self.sum / self.n as f64;
        Some(DEFAULT_ACTIVATION_K / -mean.ln() - 273.15)
    }
}

/// MKT of a series of readings in °C.
pub fn mean_kinetic_temperature(readings: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut acc = MktAccumulator::default();
    for r in readings {
        acc.add(r);
    }
    acc.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-6)
    }

    #[test]
    fn mkt_of_a_constant_temperature_is_that_temperature() {
        assert!(close(mean_kinetic_temperature([5.0; 10]), 5.0));
    }

    #[test]
    fn mkt_matches_hand_computed_values() {
        // Computed by hand from the USP formula with ΔH/R = 10000 K.
        assert!(close(
            mean_kinetic_temperature([2.0, 8.0]),
            5.536424508866332
        ));
        assert!(close(
            mean_kinetic_temperature([20.0, 25.0, 30.0]),
            25.858208428104035
        ));
        assert!(close(
            mean_kinetic_temperature([4.0, 5.0, 6.0, 12.0]),
            7.389142880062991
        ));
    }

    #[test]
    fn mkt_weighs_warm_readings_above_the_arithmetic_mean() {
        let mkt = mean_kinetic_temperature([2.0, 8.0]).unwrap();
        assert!(mkt > 5.0);
        assert_eq!(mean_kinetic_temperature([]), None);
    }
}
