//! Quiet hours: the patient's night, when a routine reminder lights the LED but keeps the buzzer
//! silent. Critical alerts (a time-critical medication, an uncertain dispense, a cold-chain alarm,
//! a storage failure) ignore them (see the README's "Dosing"), and so do the events sent to the
//! caregiver: quiet hours only ever soften the sound in the patient's room.

use chrono::NaiveTime;

/// A daily span of local time, `from` inclusive to `to` exclusive; it may wrap past midnight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct QuietHours {
    from: NaiveTime,
    to: NaiveTime,
}

impl QuietHours {
    /// Reads `"22:00-07:00"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a span like \"22:00-07:00\" (local time, from-to)");
        let (from, to) = text.split_once('-').ok_or_else(bad)?;
        let time = |s: &str| NaiveTime::parse_from_str(s.trim(), "%H:%M").map_err(|_| bad());
        let (from, to) = (time(from)?, time(to)?);
        if from == to {
            return Err(format!(
                "{text:?} starts and ends at the same time: give a span, or leave quiet_hours out"
            ));
        }
        Ok(Self { from, to })
    }

    /// Whether local time `t` is quiet.
    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.from < self.to {
            self.from <= t && t < self.to
        } else {
            t >= self.from || t < self.to
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveTime {
        NaiveTime::parse_from_str(s, "%H:%M").unwrap()
    }

    #[test]
    fn quiet_hours_wrap_past_midnight() {
        let q = QuietHours::parse("22:00-07:00").unwrap();
        for quiet in ["22:00", "23:59", "00:00", "06:59"] {
            assert!(q.contains(t(quiet)), "{quiet}");
        }
        for loud in ["07:00", "12:00", "21:59"] {
            assert!(!q.contains(t(loud)), "{loud}");
        }
        let nap = QuietHours::parse("13:00-15:00").unwrap();
        assert!(nap.contains(t("14:00")) && !nap.contains(t("15:00")));
    }

    #[test]
    fn quiet_hours_must_be_a_span() {
        assert!(QuietHours::parse("22:00").is_err());
        assert!(QuietHours::parse("22-07").is_err());
        assert!(QuietHours::parse("25:00-07:00").is_err());
        assert!(QuietHours::parse("07:00-07:00")
            .unwrap_err()
            .contains("same time"));
    }
}
