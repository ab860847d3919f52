//! Device calls that block, kept off the async workers.
//!
//! On the Pi a TMP117 read waits ~125 ms for its conversion, a DS18B20 read ~750 ms, and a
//! carousel turn up to ~17 s of stepper pacing: `rppal`'s delays are thread sleeps. Run on a
//! tokio worker, each would stall every task scheduled there (fridge control, command answers,
//! the store). So the devices that block are held by a [`Hardware`] and each call runs on
//! tokio's blocking pool while the calling task awaits it; the other tasks keep running.
//! GPIO samples and output writes stay inline: they are single register accesses through
//! `/dev/gpiomem` that never wait.
//!
//! On simulated time ([`Offload::Inline`]) the call runs in place instead: the simulated board's
//! delays move the simulated clock for the whole appliance at once, deterministically, which a
//! concurrent call could not do (two threads moving one clock interleave differently on every
//! run). The simulated board in real time (`medbox run` with `hw/sim.toml`) offloads like the Pi.

/// Where blocking device calls run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Offload {
    /// On tokio's blocking pool: real hardware, real time.
    #[default]
    Blocking,
    /// In place, on the calling task: the simulated board on simulated time.
    Inline,
}

/// The devices went away: a call panicked on the blocking pool (its devices were dropped there,
/// and drivers open their outputs on drop).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the device was lost (a call to it panicked)")]
pub struct Lost;

/// Devices whose calls may block, owned by one task and lent to the blocking pool per call.
pub struct Hardware<D> {
    dev: Option<D>,
    offload: Offload,
}

impl<D: Send + 'static> Hardware<D> {
    /// Holds `dev`; its calls run where `offload` says.
    pub fn new(dev: D, offload: Offload) -> Self {
        Self {
            dev: Some(dev),
            offload,
        }
    }

    /// Runs `f` on the devices and returns what it returned. Not cancel-safe by design: the
    /// caller awaits it to the end (a call dropped half-way would lose the devices with it).
    pub async fn call<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut D) -> R + Send + 'static,
    ) -> Result<R, Lost> {
        let mut dev = self.dev.take().ok_or(Lost)?;
        match self.offload {
            Offload::Inline => {
                let r = f(&mut dev);
                self.dev = Some(dev);
                Ok(r)
            }
            Offload::Blocking => {
                match tokio::task::spawn_blocking(move || {
                    let r = f(&mut dev);
                    (dev, r)
                })
                .await
                {
                    Ok((dev, r)) => {
                        self.dev = Some(dev);
                        Ok(r)
                    }
                    Err(_) => Err(Lost),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_blocking_call_leaves_the_runtime_free_for_other_tasks() {
        let mut hw = Hardware::new(0u32, Offload::Blocking);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        // The call waits for a message only another task on this same single thread can send:
        // run in place it would deadlock; offloaded it completes.
        let other = tokio::spawn(async move {
            tokio::task::yield_now().await;
            tx.send(()).unwrap();
        });
        let got = hw
            .call(move |n| {
                rx.recv().unwrap();
                *n += 1;
                *n
            })
            .await;
        assert_eq!(got, Ok(1));
        other.await.unwrap();
        assert_eq!(hw.call(|n| *n).await, Ok(1), "the devices came back");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_call_that_panics_loses_the_devices_and_says_so() {
        let mut hw = Hardware::new(0u32, Offload::Blocking);
        let r: Result<(), Lost> = hw.call(|_| panic!("bus fault")).await;
        assert_eq!(r, Err(Lost));
        assert_eq!(hw.call(|n| *n).await, Err(Lost));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn inline_calls_run_in_place() {
        let mut hw = Hardware::new(String::new(), Offload::Inline);
        let here = std::thread::current().id();
        let there = hw
            .call(|s| {
                s.push('x');
                std::thread::current().id()
            })
            .await;
        assert_eq!(there, Ok(here));
    }
}
