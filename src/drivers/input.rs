//! Digital inputs with polarity and debouncing.
//!
//! A reed switch bounces for milliseconds and a UPS "power good" line can glitch; a level is only
//! believed once it has held for the debounce time. The first sample is believed at once, since at
//! start-up there is nothing older to prefer.

use crate::config::Level;
use embedded_hal::digital::InputPin;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A line's next edge, boxed and `Send` so a task can hold it across a `select!` (an
/// embedded-hal-async `Wait` future is neither for a generic pin).
pub type EdgeFuture<'a, E> = Pin<Box<dyn Future<Output = Result<(), E>> + Send + 'a>>;

/// Waits until `pin` is at `high`, on its edges alone: the level waits of embedded-hal-async's
/// `Wait` for a pin that implements only `wait_for_any_edge` itself.
pub async fn wait_for_level<P>(pin: &mut P, high: bool) -> Result<(), P::Error>
where
    P: InputPin + embedded_hal_async::digital::Wait,
{
    while pin.is_high()? != high {
        pin.wait_for_any_edge().await?;
    }
    Ok(())
}

/// An input pin that can say when its level changes instead of being polled: embedded-hal-async's
/// `Wait::wait_for_any_edge`, boxed. Each board implements it for its concrete pin type, where
/// the future's `Send` is known.
pub trait EdgeWait: InputPin {
    /// Resolves at the line's next edge.
    fn any_edge(&mut self) -> EdgeFuture<'_, Self::Error>;
}

/// An input line with its active level.
#[derive(Debug)]
pub struct Line<P> {
    pin: P,
    active: Level,
}

impl<P: InputPin> Line<P> {
    /// Wraps a pin whose active level is `active`.
    pub fn new(pin: P, active: Level) -> Self {
        Self { pin, active }
    }

    /// Whether the line is at its active level now.
    pub fn is_active(&mut self) -> Result<bool, P::Error> {
        Ok(match self.active {
            Level::High => self.pin.is_high()?,
            Level::Low => self.pin.is_low()?,
        })
    }

    /// Gives the pin back.
    pub fn destroy(self) -> P {
        self.pin
    }
}

/// An input whose reported state changes only after the new level held for `debounce`.
#[derive(Debug)]
pub struct DebouncedInput<P> {
    line: Line<P>,
    debounce: Duration,
    stable: Option<bool>,
    candidate: Option<(bool, Duration)>,
    /// The raw level at the last sample, so an edge that came between that sample and a wait
    /// for the next one is not waited past.
    last_raw: Option<bool>,
}

impl<P: InputPin> DebouncedInput<P> {
    /// Wraps a pin whose active level is `active`.
    pub fn new(pin: P, active: Level, debounce: Duration) -> Self {
        Self {
            line: Line::new(pin, active),
            debounce,
            stable: None,
            candidate: None,
            last_raw: None,
        }
    }

    /// Samples the line at monotonic time `at` and returns the debounced state (true: active).
    pub fn sample(&mut self, at: Duration) -> Result<bool, P::Error> {
        let raw = self.line.is_active()?;
        self.last_raw = Some(raw);
        let Some(stable) = self.stable else {
            self.stable = Some(raw);
            return Ok(raw);
        };
        if raw == stable {
            self.candidate = None;
            return Ok(stable);
        }
        let since = match self.candidate {
            Some((level, since)) if level == raw => since,
            _ => {
                self.candidate = Some((raw, at));
                at
            }
        };
        if at.saturating_sub(since) >= self.debounce {
            self.stable = Some(raw);
            self.candidate = None;
        }
        Ok(self.stable.unwrap_or(raw))
    }

    /// How long a new level must hold before [`DebouncedInput::sample`] believes it.
    pub fn debounce(&self) -> Duration {
        self.debounce
    }
}

impl<P: EdgeWait> DebouncedInput<P>
where
    P::Error: Send,
{
    /// Resolves at the line's next raw edge, or at once if the line already moved since it was
    /// last sampled (a press that began while the task was busy elsewhere); sample after it,
    /// and again once the debounce time has passed, to see what it settled to.
    pub fn edge(&mut self) -> EdgeFuture<'_, P::Error> {
        match (self.last_raw, self.line.is_active()) {
            (_, Err(e)) => Box::pin(std::future::ready(Err(e))),
            (Some(seen), Ok(now)) if seen != now => Box::pin(std::future::ready(Ok(()))),
            _ => self.line.pin.any_edge(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction};

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn a_bounce_shorter_than_the_debounce_time_is_ignored() {
        let mut pin = Mock::new(&[
            Transaction::get(State::Low),
            Transaction::get(State::High),
            Transaction::get(State::Low),
            Transaction::get(State::High),
            Transaction::get(State::High),
        ]);
        let mut door = DebouncedInput::new(pin.clone(), Level::High, ms(200));
        assert!(!door.sample(ms(0)).unwrap());
        assert!(!door.sample(ms(10)).unwrap());
        assert!(!door.sample(ms(20)).unwrap());
        assert!(!door.sample(ms(30)).unwrap());
        assert!(door.sample(ms(230)).unwrap());
        pin.done();
    }

    /// A line whose level the test sets, and whose edges never come on their own.
    struct Set(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl embedded_hal::digital::ErrorType for Set {
        type Error = std::convert::Infallible;
    }

    impl InputPin for Set {
        fn is_high(&mut self) -> Result<bool, Self::Error> {
            Ok(self.0.load(std::sync::atomic::Ordering::SeqCst))
        }
        fn is_low(&mut self) -> Result<bool, Self::Error> {
            self.is_high().map(|h| !h)
        }
    }

    impl EdgeWait for Set {
        fn any_edge(&mut self) -> EdgeFuture<'_, Self::Error> {
            Box::pin(std::future::pending())
        }
    }

    #[test]
    fn an_edge_that_came_before_the_wait_began_is_not_waited_past() {
        use std::task::{Context, Poll, Waker};
        let level = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut button = DebouncedInput::new(Set(level.clone()), Level::High, ms(50));
        assert!(!button.sample(ms(0)).unwrap());
        let mut cx = Context::from_waker(Waker::noop());
        // Nothing moved: the wait waits.
        assert!(button.edge().as_mut().poll(&mut cx).is_pending());
        // Pressed while the task was busy, before it waits again: the wait ends at once.
        level.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(matches!(
            button.edge().as_mut().poll(&mut cx),
            Poll::Ready(Ok(()))
        ));
        // Once sampled, the next wait is for the next edge.
        assert!(!button.sample(ms(10)).unwrap());
        assert!(button.edge().as_mut().poll(&mut cx).is_pending());
    }

    #[test]
    fn active_low_lines_are_inverted() {
        let mut pin = Mock::new(&[Transaction::get(State::Low), Transaction::get(State::High)]);
        let mut line = Line::new(pin.clone(), Level::Low);
        assert!(line.is_active().unwrap());
        assert!(!line.is_active().unwrap());
        pin.done();
    }
}
