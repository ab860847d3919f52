//! The dispenser's answers to what people ask: skip, reconcile, an as-needed dose, a refill, a
//! new schedule, trusting the clock, acknowledging a broken chain, readings for the holds, and
//! the stock and adherence it reports. Each validates completely and changes nothing before it
//! refuses.

use super::*;

impl Dispenser {
    pub(super) fn schedule_of(&self, patient: &str) -> Result<&Schedule, Refusal> {
        self.schedules
            .iter()
            .find(|s| s.patient == patient)
            .ok_or_else(|| Refusal::new(RefusalCode::UnknownPatient, format!("{patient:?}")))
    }

    /// Whose a reading is: the one it names, or the cabinet's only patient.
    pub(super) fn whose(&self, reading: &VitalReading) -> Result<String, Refusal> {
        let patients: Vec<&str> = self.schedules.iter().map(|s| s.patient.as_str()).collect();
        crate::dosing::vitals::whose(reading.patient.as_deref(), &patients)
    }

    /// Takes a reading for its patient's holds: recorded (unless it already was), alerted when
    /// out of band, and a held dose of that patient may be released at once.
    pub(super) fn vital(
        &mut self,
        mut reading: VitalReading,
        source: VitalSource,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Answer {
        let patient = self.whose(&reading)?;
        reading.patient = Some(patient.clone());
        let done = format!(
            "recorded {:?} {} {} for {patient}",
            reading.vital,
            reading.value,
            crate::dosing::vitals::unit(reading.vital)
        );
        if source == VitalSource::New {
            emit(
                fx,
                Event::Vital {
                    at: now.wall,
                    reading: reading.clone(),
                },
            );
        }
        if let Some(band) = crate::dosing::vitals::out_of_band(&reading) {
            emit(
                fx,
                Event::VitalAlert {
                    at: now.wall,
                    reading: reading.clone(),
                    band: band.into(),
                },
            );
        }
        self.vitals.push(reading);
        // Keep a day of readings: holds look back hours at most.
        let horizon = now.wall - chrono::Duration::days(1);
        self.vitals.retain(|v| v.at > horizon);
        // A new reading may release a held dose at once.
        self.plan(now, fx);
        Ok(done)
    }

    /// A pharmacist has looked at the broken chain and says dosing may go on: recorded with who
    /// and why (the next start follows the chain past this break).
    pub(super) fn acknowledge_integrity(
        &mut self,
        actor: String,
        comment: String,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Answer {
        let Some(b) = self.integrity.take() else {
            return refuse(RefusalCode::NotRaised, "the audit chain verified at start");
        };
        emit(
            fx,
            Event::Integrity {
                at: now.wall,
                seq: b.seq,
                detail: b.detail,
                acknowledged: true,
                actor: Some(actor.clone()),
                comment: Some(comment),
            },
        );
        self.refresh_lights(now, false, fx);
        self.plan(now, fx);
        Ok(format!(
            "integrity alarm acknowledged by {actor}; the dispenser is unlocked"
        ))
    }

    pub(super) fn trust_clock(
        &mut self,
        actor: String,
        comment: String,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Answer {
        self.baseline_s = wall_minus_mono(now);
        if self.clock_trusted {
            return refuse(RefusalCode::NotRaised, "the clock is already trusted");
        }
        self.storage_works()?;
        self.clock_trusted = true;
        self.untrusted_at_start = None;
        emit(
            fx,
            Event::ClockTrust {
                at: now.wall,
                trusted: true,
                drift_s: 0,
                actor: Some(actor.clone()),
                elapsed: Some(self.clocks(now).elapsed),
                comment: Some(comment),
            },
        );
        Ok(format!(
            "clock trusted by {actor}; the dispenser is unlocked"
        ))
    }

    /// Validates a new schedule completely before it replaces the old one; a rejected one
    /// changes nothing and says why, every problem with its line and field.
    pub(super) fn replace_schedule(
        &mut self,
        patient: String,
        source: String,
        actor: String,
        confirm: Option<String>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Answer {
        use crate::dosing::replace::{check, version, Refusal as Verdict};
        let file = std::path::PathBuf::from(format!("cmd:replace_schedule/{patient}.toml"));
        let new = Schedule::parse(&source, &file)
            .and_then(|s| {
                let misfits = s.slot_problems(self.geometry.slots);
                if misfits.is_empty() {
                    Ok(s)
                } else {
                    Err(misfits)
                }
            })
            .map_err(|errs| {
                let all: Vec<String> = errs.iter().map(ToString::to_string).collect();
                Refusal::new(RefusalCode::InvalidSchedule, all.join("; "))
            })?;
        if new.patient != patient {
            return refuse(
                RefusalCode::PatientMismatch,
                format!(
                    "the schedule is for {:?}, the command names {patient:?}",
                    new.patient
                ),
            );
        }
        let index = self.schedules.iter().position(|s| s.patient == patient);
        let old = index.map(|i| &self.schedules[i]);
        let old_version = old.map(version);
        let new_version = version(&new);
        // A schedule loaded at start-up removed a guard and waits for a second person: the
        // last confirmed version stays the reference, for this schedule or any other.
        let pending = self.unconfirmed.get(&patient);
        if old_version.as_deref() == Some(new_version.as_str()) && pending.is_none() {
            return Ok(format!(
                "unchanged: version {new_version} is already in use"
            ));
        }
        let others: Vec<&Schedule> = self
            .schedules
            .iter()
            .filter(|s| s.patient != patient)
            .collect();
        let mut requested_by = None;
        let verdict = match (check(old, &new, &others, now.wall), pending) {
            (Ok(()), Some(u)) => {
                let weak = crate::dosing::replace::weakened(&u.confirmed, &new);
                if weak.is_empty() {
                    Ok(())
                } else {
                    Err(Verdict::NeedsConfirmation(
                        weak.into_iter().map(|(_, why)| why).collect(),
                    ))
                }
            }
            (verdict, _) => verdict,
        };
        match verdict {
            Ok(()) => {}
            Err(Verdict::Conflicts(c)) => {
                // Each conflict already starts with its code (`SLOT_CONFLICT: …`).
                let joined = c.join("; ");
                let detail = joined
                    .strip_prefix("SLOT_CONFLICT: ")
                    .unwrap_or(&joined)
                    .to_string();
                return refuse(RefusalCode::SlotConflict, detail);
            }
            Err(Verdict::NeedsConfirmation(c)) => {
                let first = self.awaiting_confirmation.get(&new_version).cloned();
                match (confirm.as_deref(), first) {
                    (Some(v), Some(first)) if v == new_version && first != actor => {
                        self.awaiting_confirmation.remove(&new_version);
                        requested_by = Some(first);
                    }
                    (Some(v), Some(_)) if v == new_version => {
                        return refuse(
                            RefusalCode::SamePerson,
                            "the second confirmation must come from someone else",
                        )
                    }
                    _ => {
                        self.awaiting_confirmation
                            .insert(new_version.clone(), actor.clone());
                        return refuse(
                            RefusalCode::ConfirmationRequired,
                            format!(
                                "{}; a second person must send the same schedule with confirm = {new_version:?}",
                                c.join("; ")
                            ),
                        );
                    }
                }
            }
        }
        match index {
            Some(i) => self.schedules[i] = new,
            None => self.schedules.push(new),
        }
        self.inventory.schedules_changed();
        if self.unconfirmed.remove(&patient).is_some() {
            self.planner.unlock(&patient);
        }
        self.planner.schedule_installed(&patient, now.wall);
        emit(
            fx,
            Event::ScheduleReplaced {
                at: now.wall,
                patient: patient.clone(),
                old: old_version,
                new: new_version.clone(),
                actor,
                requested_by,
                source,
            },
        );
        Ok(format!(
            "schedule of {patient} replaced: version {new_version}"
        ))
    }

    /// Publishes the adherence of the last `days` days and returns it.
    pub(super) fn summarise(
        &mut self,
        now: Instant,
        days: u32,
        trigger: String,
        fx: &mut Vec<Effect>,
    ) -> Vec<crate::dosing::adherence::Tally> {
        let to = now.wall;
        let from = to - chrono::Duration::days(i64::from(days));
        let tallies = crate::dosing::adherence::tally(
            self.history
                .iter()
                .filter(|(_, r)| r.at >= from && r.at < to)
                .map(|(p, r)| (p.to_string(), r.clone())),
        );
        emit(
            fx,
            Event::Adherence {
                at: to,
                from,
                to,
                trigger,
                tallies: tallies.clone(),
            },
        );
        tallies
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn refill(
        &mut self,
        slot: u8,
        added: u32,
        expiry: Option<NaiveDate>,
        actor: String,
        note: String,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Answer {
        let Geometry { slots, capacity } = self.geometry;
        if slot >= slots {
            return refuse(
                RefusalCode::UnknownSlot,
                format!("slot {slot} does not exist (the carousel has {slots})"),
            );
        }
        if added == 0 {
            return refuse(RefusalCode::Malformed, "`units` must be at least 1");
        }
        let held = self.inventory.slot(slot).map_or(0, |s| s.count);
        if u64::from(held) + u64::from(added) > u64::from(capacity) {
            return refuse(
                RefusalCode::OutOfRange,
                format!(
                    "slot {slot} holds {held} and takes at most {capacity} \
                     (carousel.slot_capacity); {added} more cannot be true; nothing recorded"
                ),
            );
        }
        if expiry.is_some_and(|d| d < now.wall.date_naive()) {
            return refuse(
                RefusalCode::Expired,
                "the lot's expiry date has passed; not loaded",
            );
        }
        let count = self.inventory.refill(slot, added, expiry);
        // Whatever waited for stock may be tried again.
        self.retry_after.retain(|_, until| until.is_some());
        emit(
            fx,
            Event::Refill {
                at: now.wall,
                slot,
                added,
                count,
                expiry,
                actor,
                note,
            },
        );
        Ok(format!("slot {slot}: {added} added, {count} in the slot"))
    }

    /// Reports the slots that need a refill (each problem once, then daily until acknowledged).
    pub(super) fn stock_alerts(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let days = self
            .refill_days
            .unwrap_or(crate::dosing::inventory::DEFAULT_REFILL_DAYS);
        let due = self.inventory.alerts_due(&self.schedules, now.wall, days);
        for w in due {
            emit(
                fx,
                Event::StockAlert {
                    at: now.wall,
                    slot: w.slot,
                    patient: w.patient,
                    medication: w.medication,
                    count: w.count,
                    days_left: w.days_left.map(|d| (d * 10.0).round() / 10.0),
                    reason: w.issue.code().into(),
                },
            );
        }
    }

    pub(super) fn skip(
        &mut self,
        patient: String,
        medication: &str,
        occurrence: DateTime<Utc>,
        actor: String,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Answer {
        // The dose's own records, and everything its medication's rules read.
        let from = self.needed_from(&patient, now).min(occurrence);
        if !self.history_holds(&patient, from, now, fx) {
            return refuse(RefusalCode::Busy, HISTORY_LOADING);
        }
        let schedule = self.schedule_of(&patient)?;
        let Some((m, Some(rec))) = schedule.medication(medication) else {
            return refuse(
                RefusalCode::UnknownMedication,
                format!("{medication:?} is not a scheduled medication of {patient}"),
            );
        };
        let slot = *m.slot.get_ref();
        // Records carry the schedule's spelling, whatever case the command used.
        let name = m.name.clone();
        let known = engine::windows(
            m,
            rec,
            schedule.tz,
            occurrence - chrono::Duration::days(1),
            occurrence + chrono::Duration::days(1),
        )
        .iter()
        .any(|w| w.occurrence == occurrence);
        if !known {
            return refuse(
                RefusalCode::UnknownOccurrence,
                format!("{name} is not scheduled at {}", occurrence.to_rfc3339()),
            );
        }
        let settled = self.history.standing(&patient).iter().any(|r| {
            r.is_of(m)
                && r.occurrence == Some(occurrence)
                && !matches!(r.outcome, Outcome::Failed | Outcome::ConfirmedNotGiven)
        });
        if settled {
            return refuse(
                RefusalCode::AlreadySettled,
                "this dose already has an outcome",
            );
        }
        self.storage_works()?;
        let record = engine::record(name, Some(occurrence), now.wall, 0, Outcome::Skipped);
        let detail = format!("skipped by {actor}");
        self.record(
            patient,
            slot,
            record,
            Some("SKIPPED".into()),
            detail,
            Some(actor),
            now,
            fx,
        );
        Ok("skipped".into())
    }

    /// Closes an uncertain or interrupted dispense with what the caregiver found. Given: the dose
    /// counts once and is settled. Not given: the uncertain records stop counting and the dose
    /// may be dispensed again while its window is open (an automatic retry was never made).
    pub(super) fn reconcile(
        &mut self,
        patient: String,
        medication: &str,
        occurrence: Option<DateTime<Utc>>,
        (given, units, actor, note): (bool, Option<u32>, String, String),
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Answer {
        let schedule = self.schedule_of(&patient)?;
        let Some((m, _)) = schedule.medication(medication) else {
            return refuse(
                RefusalCode::UnknownMedication,
                format!("{medication:?} is not a medication of {patient}"),
            );
        };
        self.storage_works()?;
        let slot = *m.slot.get_ref();
        let name = m.name.clone();
        let open: Vec<DoseRecord> = self
            .history
            .standing(&patient)
            .into_iter()
            .filter(|r| {
                r.is_of(m)
                    && r.occurrence == occurrence
                    && matches!(r.outcome, Outcome::Uncertain | Outcome::Dispensing)
            })
            .cloned()
            .collect();
        let Some(last) = open.last() else {
            return refuse(
                RefusalCode::NothingToReconcile,
                format!(
                    "no uncertain dispense of {name} {} awaits reconciliation",
                    occurrence.map_or("(as needed)".to_string(), |o| format!(
                        "at {}",
                        o.to_rfc3339()
                    ))
                ),
            );
        };
        let dose = m.units_on(last.at.with_timezone(&schedule.tz).date_naive());
        let asked = last.units.max(dose);
        let (record, mut answer) = if given {
            let units = units.unwrap_or(asked);
            if units == 0 {
                return refuse(
                    RefusalCode::Malformed,
                    "`units` must be at least 1 when given",
                );
            }
            // The patient cannot have had more than the dispense released at most.
            if units > asked {
                return refuse(
                    RefusalCode::OutOfRange,
                    format!(
                        "the dispense released at most {asked} unit(s); {units} cannot have been given"
                    ),
                );
            }
            // What the beam missed left the slot too.
            self.inventory
                .dose(slot, occurrence, Outcome::ConfirmedGiven, units);
            (
                DoseRecord {
                    medication: name,
                    occurrence,
                    // When the dose was released, on both timelines, so limits and the rolling
                    // window see it there (and a restart resumes from a consistent pair).
                    at: last.at,
                    units,
                    outcome: Outcome::ConfirmedGiven,
                    slot: None,
                    elapsed: Some(last.elapsed_at()),
                },
                format!("reconciled: given, {units} unit(s)"),
            )
        } else {
            self.inventory
                .dose(slot, occurrence, Outcome::ConfirmedNotGiven, 0);
            (
                engine::record(name, occurrence, now.wall, 0, Outcome::ConfirmedNotGiven),
                "reconciled: not given; the dose may be dispensed again while its window is open"
                    .to_string(),
            )
        };
        let name = record.medication.clone();
        let code = if given {
            "CONFIRMED_GIVEN"
        } else {
            "CONFIRMED_NOT_GIVEN"
        };
        self.record(
            patient.clone(),
            slot,
            record,
            Some(code.into()),
            format!("reconciled by {actor}: {note}"),
            Some(actor.clone()),
            now,
            fx,
        );
        // Not given and its window already closed: the dose is missed, as any other would be
        // (the planner passed its close while it was still uncertain).
        let closed = self
            .window_of(&patient, &name, occurrence)
            .is_some_and(|w| w.closes <= now.wall);
        if !given && closed {
            let record = engine::record(name, occurrence, now.wall, 0, Outcome::Missed);
            self.record(
                patient,
                slot,
                record,
                Some(engine::Reason::MissedLocked.code()),
                "reconciled as not given after its window closed".into(),
                Some(actor),
                now,
                fx,
            );
            answer =
                "reconciled: not given; its window has closed, so it is recorded missed".into();
        }
        // The uncertain alarm ends once nothing else needs attention.
        self.refresh_lights(now, false, fx);
        // Not given while the window is open: it may be dispensed now.
        self.plan(now, fx);
        Ok(answer)
    }

    /// Decides an as-needed request; a dose allowed is dispensed and answered when it ends.
    pub(super) fn prn(
        &mut self,
        patient: String,
        medication: &str,
        request: PrnRequest,
        token: Option<Token>,
        now: Instant,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Refusal> {
        let from = self.needed_from(&patient, now);
        if !self.history_holds(&patient, from, now, fx) {
            return refuse(RefusalCode::Busy, HISTORY_LOADING);
        }
        let schedule = self.schedule_of(&patient)?;
        let Some((m, _)) = schedule.medication(medication) else {
            return refuse(RefusalCode::UnknownMedication, format!("{medication:?}"));
        };
        self.storage_works()?;
        if let Some(b) = &self.integrity {
            return refuse(RefusalCode::IntegrityBroken, integrity_detail(b));
        }
        if self.busy() {
            return refuse(
                RefusalCode::Dispensing,
                "the carousel is dispensing; ask again when it has finished",
            );
        }
        if self.planner.is_locked(&patient, &m.name) {
            return refuse(
                RefusalCode::Dose(engine::Reason::ConfirmationRequired),
                format!(
                    "the schedule in force removed the weekly high-alert guard of {}; a second person must confirm it",
                    m.name
                ),
            );
        }
        let decision = engine::decide_prn(
            m,
            schedule.tz,
            self.clocks(now),
            self.history.of(&patient),
            &crate::dosing::vitals::of_patient(&self.vitals, &patient),
            self.clock_trusted,
            &request,
        );
        let (slot, name) = (*m.slot.get_ref(), m.name.clone());
        match decision {
            engine::Decision::Refuse { reason, detail } => {
                refuse(RefusalCode::Dose(reason), detail)
            }
            engine::Decision::Dispense { units, .. } => {
                // The records say who asked, and why an override was allowed.
                let note = match &request.override_reason {
                    Some(reason) => format!(
                        "as-needed, requested by {} ({:?}), limits overridden: {reason}",
                        request.actor, request.role
                    ),
                    None => format!(
                        "as-needed, requested by {} ({:?})",
                        request.actor, request.role
                    ),
                };
                let attempt = Attempt {
                    patient,
                    medication: name,
                    slot,
                    occurrence: None,
                    actor: Some(request.actor),
                };
                let job = Job::Dose {
                    attempt,
                    units,
                    note: Some(note),
                    reply: token,
                };
                self.begin(job, now, fx);
                Ok(())
            }
        }
    }
}
