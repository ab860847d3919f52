//! The DS18B20's `w1_slave` file, rendered from the air node of the thermal model.

use super::SimHandle;
use crate::drivers::ds18b20::W1Source;

/// The simulated w1 file.
pub struct SimW1 {
    handle: SimHandle,
}

impl SimW1 {
    pub(super) fn new(handle: SimHandle) -> Self {
        Self { handle }
    }
}

impl W1Source for SimW1 {
    fn read_slave(&mut self) -> std::io::Result<String> {
        // A real conversion at 12 bits takes 750 ms.
        self.handle.block_for(std::time::Duration::from_millis(750));
        self.handle.world().ds18b20_text().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "w1_slave: no such device (sensor gone from the bus)",
            )
        })
    }
}
