//! Inventory per carousel slot (see the README's "Dosing"): a count that only a confirmed drop
//! decreases and only a recorded refill increases, the expiry date of what is loaded, and the
//! refill alerts that follow from both. Pure: the dispenser task applies drops and refills and
//! reports alerts; the store rebuilds the state from the audit log at start-up.

use super::engine::windows;
use super::schedule::Schedule;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Refill alert when fewer than this many days of doses remain, unless configured otherwise.
pub const DEFAULT_REFILL_DAYS: f64 = 7.0;
/// An alert nobody acknowledged comes again after this long.
pub const REPEAT_EVERY: Duration = Duration::hours(24);
/// How far ahead scheduled use is counted to estimate days of stock left.
const USE_HORIZON_DAYS: i64 = 14;

/// What one slot holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotStock {
    /// Units in the slot.
    pub count: u32,
    /// Expiry date of the loaded lot (the earliest, after a top-up).
    pub expiry: Option<NaiveDate>,
}

/// Why a slot needs someone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StockIssue {
    /// Fewer than the configured days of doses remain.
    LowStock,
    /// The loaded lot expires within the refill horizon.
    ExpiresSoon,
    /// The loaded lot has expired.
    Expired,
}

impl StockIssue {
    /// Stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            StockIssue::LowStock => "LOW_STOCK",
            StockIssue::ExpiresSoon => "EXPIRES_SOON",
            StockIssue::Expired => "EXPIRED",
        }
    }
}

/// A slot that needs a refill, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct StockWarning {
    /// Carousel slot.
    pub slot: u8,
    /// Patient pseudonym of the medication in it.
    pub patient: String,
    /// Medication in it.
    pub medication: String,
    /// Units left.
    pub count: u32,
    /// Days of scheduled doses the count covers (None: no scheduled use, e.g. as-needed only).
    pub days_left: Option<f64>,
    /// What is wrong.
    pub issue: StockIssue,
}

/// Counts and lots per slot, with the alert bookkeeping.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inventory {
    slots: BTreeMap<u8, SlotStock>,
    /// Per (slot, issue): when it was last reported, and whether someone acknowledged it.
    alerted: BTreeMap<(u8, StockIssue), (DateTime<Utc>, bool)>,
    /// Units the break-beam saw of each uncertain dispense not yet reconciled, per (slot, dose).
    unreconciled: BTreeMap<(u8, Option<DateTime<Utc>>), u32>,
    /// Each slot's daily use, worked out again every [`USE_REFRESH`].
    uses: UseCache,
}

/// How long a slot's worked-out daily use stands. It is a fortnight's average, so an hour
/// changes it by little; working out a fortnight of windows every minute was a sixth of the
/// appliance's CPU. A schedule change forgets it at once ([`Inventory::schedules_changed`]).
pub const USE_REFRESH: Duration = Duration::hours(1);

/// Worked-out daily use per slot (None: no schedule uses the slot) and when.
#[derive(Clone, Debug, Default)]
struct UseCache {
    at: Option<DateTime<Utc>>,
    per_slot: BTreeMap<u8, Option<(String, String, f64)>>,
}

/// Derived data: two inventories holding the same stock are equal whatever either worked out.
impl PartialEq for UseCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Inventory {
    /// What a slot holds, if its stock was ever recorded.
    pub fn slot(&self, slot: u8) -> Option<&SlotStock> {
        self.slots.get(&slot)
    }

    /// Every recorded slot.
    pub fn slots(&self) -> &BTreeMap<u8, SlotStock> {
        &self.slots
    }

    /// Adds a refill; returns the new count. The expiry kept is the earliest of what is now in
    /// the slot, because old units are not separated from new ones. A refill clears the slot's
    /// alerts: what it fixed is checked again from scratch.
    pub fn refill(&mut self, slot: u8, added: u32, expiry: Option<NaiveDate>) -> u32 {
        let s = self.slots.entry(slot).or_default();
        s.expiry = match (s.count, s.expiry, expiry) {
            (0, _, new) => new,
            (_, Some(old), Some(new)) => Some(old.min(new)),
            (_, old, new) => old.or(new),
        };
        s.count = s.count.saturating_add(added);
        self.alerted.retain(|(sl, _), _| *sl != slot);
        s.count
    }

    /// Takes `units` that the break-beam saw fall; returns the new count, if the slot is known.
    pub fn take(&mut self, slot: u8, units: u32) -> Option<u32> {
        let s = self.slots.get_mut(&slot)?;
        s.count = s.count.saturating_sub(units);
        Some(s.count)
    }

    /// A dose outcome's effect on the count. What the beam saw leaves it (`dispensed`,
    /// `uncertain`); when a caregiver confirms an uncertain dose was had, what the beam missed
    /// leaves it too. The dispenser and the replay at start-up both go through here, so the
    /// count after a restart is the count before it.
    pub fn dose(
        &mut self,
        slot: u8,
        occurrence: Option<DateTime<Utc>>,
        outcome: super::engine::Outcome,
        units: u32,
    ) {
        use super::engine::Outcome;
        match outcome {
            Outcome::Dispensed => {
                self.take(slot, units);
            }
            Outcome::Uncertain => {
                self.take(slot, units);
                let seen = self.unreconciled.entry((slot, occurrence)).or_default();
                *seen = (*seen).max(units);
            }
            Outcome::ConfirmedGiven => {
                let seen = self.unreconciled.remove(&(slot, occurrence)).unwrap_or(0);
                self.take(slot, units.saturating_sub(seen));
            }
            Outcome::ConfirmedNotGiven => {
                self.unreconciled.remove(&(slot, occurrence));
            }
            _ => {}
        }
    }

    /// Whether a dose of `units` certainly cannot come out of `slot` (its recorded count is
    /// lower); an unrecorded slot is not refused on a guess.
    pub fn short_of(&self, slot: u8, units: u32) -> bool {
        self.slots.get(&slot).is_some_and(|s| s.count < units)
    }

    /// Someone acknowledged a slot's alerts: they stop repeating until a refill.
    pub fn acknowledge(&mut self, slot: u8) -> bool {
        let mut any = false;
        for ((s, _), (_, acked)) in self.alerted.iter_mut() {
            if *s == slot {
                *acked = true;
                any = true;
            }
        }
        any
    }

    /// Remembers an alert reported before a restart, so it repeats on its own schedule.
    pub fn restore_alert(&mut self, slot: u8, issue: StockIssue, at: DateTime<Utc>) {
        self.alerted.insert((slot, issue), (at, false));
    }

    /// The schedules changed: each slot's daily use is worked out again at the next look.
    pub fn schedules_changed(&mut self) {
        self.uses = UseCache::default();
    }

    /// The warnings to report at `now`: each current problem once, then again every
    /// [`REPEAT_EVERY`] until acknowledged or fixed.
    pub fn alerts_due(
        &mut self,
        schedules: &[Schedule],
        now: DateTime<Utc>,
        refill_days: f64,
    ) -> Vec<StockWarning> {
        // A clock stepped back works it out again too.
        if self
            .uses
            .at
            .is_none_or(|at| now < at || now - at >= USE_REFRESH)
        {
            self.uses = UseCache {
                at: Some(now),
                per_slot: BTreeMap::new(),
            };
        }
        let uses = &mut self.uses.per_slot;
        let current = warnings(&self.slots, now, refill_days, |slot| {
            uses.entry(slot)
                .or_insert_with(|| daily_use(schedules, slot, now))
                .clone()
        });
        self.alerted
            .retain(|k, _| current.iter().any(|w| (w.slot, w.issue) == *k));
        let mut out = Vec::new();
        for w in current {
            let key = (w.slot, w.issue);
            let due = match self.alerted.get(&key) {
                None => true,
                Some((_, true)) => false,
                Some((last, false)) => now - *last >= REPEAT_EVERY,
            };
            if due {
                self.alerted.insert(key, (now, false));
                out.push(w);
            }
        }
        out
    }
}

/// Scheduled units per day from `slot` over the coming fortnight, with the patient and
/// medication that use it.
fn daily_use(
    schedules: &[Schedule],
    slot: u8,
    now: DateTime<Utc>,
) -> Option<(String, String, f64)> {
    for s in schedules {
        for (m, rec) in &s.medications {
            if *m.slot.get_ref() != slot {
                continue;
            }
            let per_day = match rec {
                Some(rec) => {
                    let to = now + Duration::days(USE_HORIZON_DAYS);
                    let units: u32 = windows(m, rec, s.tz, now, to)
                        .iter()
                        .filter(|w| w.occurrence >= now && w.occurrence < to)
                        .filter(|w| m.active_on(w.occurrence.with_timezone(&s.tz).date_naive()))
                        .map(|w| m.units_on(w.occurrence.with_timezone(&s.tz).date_naive()))
                        .sum();
                    f64::from(units) / USE_HORIZON_DAYS as f64
                }
                None => 0.0,
            };
            return Some((s.patient.clone(), m.name.clone(), per_day));
        }
    }
    None
}

/// Every slot's current problems.
fn warnings(
    slots: &BTreeMap<u8, SlotStock>,
    now: DateTime<Utc>,
    refill_days: f64,
    mut daily_use: impl FnMut(u8) -> Option<(String, String, f64)>,
) -> Vec<StockWarning> {
    let mut out = Vec::new();
    for (&slot, stock) in slots {
        // A slot no schedule uses needs no refill.
        let Some((patient, medication, per_day)) = daily_use(slot) else {
            continue;
        };
        let days_left = (per_day > 0.0).then(|| f64::from(stock.count) / per_day);
        let mut issues = Vec::new();
        if days_left.is_some_and(|d| d < refill_days) {
            issues.push(StockIssue::LowStock);
        }
        if let Some(exp) = stock.expiry {
            let today = now.date_naive();
            if exp < today {
                issues.push(StockIssue::Expired);
            } else if (exp - today).num_days() as f64 <= refill_days {
                issues.push(StockIssue::ExpiresSoon);
            }
        }
        for issue in issues {
            out.push(StockWarning {
                slot,
                patient: patient.clone(),
                medication: medication.clone(),
                count: stock.count,
                days_left,
                issue,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_counts_what_the_beam_saw_and_what_a_caregiver_confirmed() {
        use crate::dosing::engine::Outcome;
        let occ = DateTime::parse_from_rfc3339("2026-03-02T07:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut inv = Inventory::default();
        inv.refill(0, 10, None);
        // The beam saw one of two units; the caregiver confirms both were had.
        inv.dose(0, Some(occ), Outcome::Uncertain, 1);
        assert_eq!(inv.slot(0).unwrap().count, 9);
        inv.dose(0, Some(occ), Outcome::ConfirmedGiven, 2);
        assert_eq!(inv.slot(0).unwrap().count, 8);
        // Seen nothing, confirmed not given: the count stays.
        inv.dose(0, None, Outcome::Uncertain, 0);
        inv.dose(0, None, Outcome::ConfirmedNotGiven, 0);
        assert_eq!(inv.slot(0).unwrap().count, 8);
        // An interrupted dispense (no uncertain record) confirmed as given.
        inv.dose(
            0,
            Some(occ + chrono::Duration::hours(12)),
            Outcome::ConfirmedGiven,
            1,
        );
        assert_eq!(inv.slot(0).unwrap().count, 7);
    }
    use std::path::Path;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn twice_daily() -> Vec<Schedule> {
        vec![Schedule::parse(
            "[patient]\nid = \"p-1\"\ntimezone = \"UTC\"\n[[medication]]\nname = \"A\"\nslot = 2\nunits = 1\ntimes = [\"08:00\", \"20:00\"]\n",
            Path::new("t.toml"),
        )
        .unwrap()]
    }

    fn four_times_daily() -> Vec<Schedule> {
        vec![Schedule::parse(
            "[patient]\nid = \"p-1\"\ntimezone = \"UTC\"\n[[medication]]\nname = \"A\"\nslot = 2\nunits = 1\ntimes = [\"06:00\", \"10:00\", \"14:00\", \"18:00\"]\n",
            Path::new("t.toml"),
        )
        .unwrap()]
    }

    /// Daily use is worked out at most hourly, but a schedule change is seen at the next look.
    #[test]
    fn a_schedule_change_is_seen_by_the_next_stock_look_and_use_is_refreshed_hourly() {
        let mut inv = Inventory::default();
        inv.refill(2, 20, None);
        let t0 = utc("2026-03-02T09:00:00Z");
        assert!(
            inv.alerts_due(&twice_daily(), t0, 7.0).is_empty(),
            "10 days"
        );
        let busier = four_times_daily();
        inv.schedules_changed();
        let a = inv.alerts_due(&busier, t0 + Duration::minutes(1), 7.0);
        assert_eq!(a.len(), 1, "5 days left at four a day");
        assert_eq!(a[0].days_left, Some(5.0));
        // Without being told, the change is still seen within the hour.
        let mut inv = Inventory::default();
        inv.refill(2, 20, None);
        assert!(inv.alerts_due(&twice_daily(), t0, 7.0).is_empty());
        assert_eq!(
            inv.alerts_due(&busier, t0 + USE_REFRESH, 7.0).len(),
            1,
            "worked out again after an hour"
        );
        // A clock stepped back works it out again too.
        let mut inv = Inventory::default();
        inv.refill(2, 20, None);
        assert!(inv.alerts_due(&twice_daily(), t0, 7.0).is_empty());
        assert_eq!(
            inv.alerts_due(&busier, t0 - Duration::minutes(5), 7.0)
                .len(),
            1
        );
    }

    #[test]
    fn inventory_is_decremented_only_by_confirmed_drops_and_refills_add() {
        let mut inv = Inventory::default();
        assert_eq!(inv.take(2, 1), None, "an unrecorded slot has no count");
        assert!(
            !inv.short_of(2, 1),
            "an unrecorded slot is not refused on a guess"
        );
        assert_eq!(inv.refill(2, 10, None), 10);
        assert_eq!(inv.take(2, 3), Some(7));
        assert_eq!(inv.take(2, 9), Some(0), "never below zero");
        assert!(inv.short_of(2, 1));
    }

    #[test]
    fn refill_alert_when_fewer_than_seven_days_remain_repeated_daily_until_acknowledged() {
        let s = twice_daily();
        let mut inv = Inventory::default();
        inv.refill(2, 20, None);
        let t0 = utc("2026-03-02T09:00:00Z");
        // 20 units at 2 a day: 10 days, no alert.
        assert!(inv.alerts_due(&s, t0, DEFAULT_REFILL_DAYS).is_empty());
        inv.take(2, 8);
        let a = inv.alerts_due(&s, t0, DEFAULT_REFILL_DAYS);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].issue, StockIssue::LowStock);
        assert_eq!(a[0].days_left, Some(6.0));
        // Not again within the day; again a day later; never after an acknowledgement.
        assert!(inv.alerts_due(&s, t0 + Duration::hours(23), 7.0).is_empty());
        assert_eq!(inv.alerts_due(&s, t0 + Duration::hours(24), 7.0).len(), 1);
        assert!(inv.acknowledge(2));
        assert!(inv.alerts_due(&s, t0 + Duration::hours(72), 7.0).is_empty());
        // A refill clears it; running low again alerts again.
        inv.refill(2, 30, None);
        assert!(inv.alerts_due(&s, t0 + Duration::hours(73), 7.0).is_empty());
        inv.take(2, 35);
        assert_eq!(inv.alerts_due(&s, t0 + Duration::hours(74), 7.0).len(), 1);
    }

    #[test]
    fn refill_alert_threshold_is_configurable() {
        let s = twice_daily();
        let mut inv = Inventory::default();
        inv.refill(2, 20, None);
        assert_eq!(
            inv.alerts_due(&s, utc("2026-03-02T09:00:00Z"), 14.0).len(),
            1
        );
    }

    #[test]
    fn expiry_is_the_earliest_loaded_lot_and_expired_stock_alerts() {
        let s = twice_daily();
        let mut inv = Inventory::default();
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        inv.refill(2, 100, Some(d("2026-03-20")));
        inv.refill(2, 10, Some(d("2027-01-01")));
        assert_eq!(inv.slot(2).unwrap().expiry, Some(d("2026-03-20")));
        let soon = inv.alerts_due(&s, utc("2026-03-15T09:00:00Z"), 7.0);
        assert_eq!(soon[0].issue, StockIssue::ExpiresSoon);
        let gone = inv.alerts_due(&s, utc("2026-03-21T09:00:00Z"), 7.0);
        assert_eq!(gone[0].issue, StockIssue::Expired);
        // An emptied slot refilled takes the new lot's date.
        inv.take(2, 110);
        inv.refill(2, 60, Some(d("2027-06-01")));
        assert_eq!(inv.slot(2).unwrap().expiry, Some(d("2027-06-01")));
    }

    #[test]
    fn a_slot_no_schedule_uses_never_alerts() {
        let mut inv = Inventory::default();
        inv.refill(5, 0, None);
        assert!(inv
            .alerts_due(&twice_daily(), utc("2026-03-02T09:00:00Z"), 7.0)
            .is_empty());
    }
}
