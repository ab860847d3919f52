//! Typed physical units, so a temperature can never be passed where a duration or a count is meant.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A temperature in degrees Celsius.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Celsius(pub f64);

impl Celsius {
    /// The value in kelvin, for Arrhenius-type computations such as mean kinetic temperature.
    pub fn kelvin(self) -> f64 {
        self.0 + 273.15
    }
}

impl fmt::Display for Celsius {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} °C", self.0)
    }
}
