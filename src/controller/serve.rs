//! The controller's edge to the store: every event is made durable before anything else hears of
//! it, durability barriers are answered, and a storage failure is handled as the README's "The
//! store and the audit log" says (dispenser locked, fridge running, retried for a grace period,
//! then a stop with the events still unrecorded handed back). Shared by `medbox sim` and `medbox
//! run`.

use super::{DispenserCommand, Running};
use crate::clock::Clock;
use crate::dosing::dispenser::Command;
use crate::events::Event;
use crate::store::backlog::{Backlog, Health, GRACE};
use crate::store::outbox::OutboxRequests;
use crate::store::recorder::{Recorded, Recorder};
use crate::store::StoreError;
use std::future::Future;
use std::time::Duration;

/// How often the database is checked for readings other processes recorded.
const VITALS_POLL: Duration = Duration::from_secs(60);

/// How a served run ended.
pub struct Served {
    /// Storage failed past its grace period (or at the end): the error and every event that
    /// could not be stored, oldest first.
    pub storage_failure: Option<(StoreError, Vec<Event>)>,
}

/// Runs the controller until `until` completes or its tasks end, then stops it (safe states)
/// and records what the stop reported. `seen` hears every event; `stored` every durable record.
/// The uplink's outbox requests are answered on the recorder's connection between two records,
/// so this task stays the connection's one owner.
pub async fn serve(
    mut running: Running,
    clock: &dyn Clock,
    mut recorder: Option<&mut Recorder>,
    mut outbox: Option<&mut OutboxRequests>,
    until: impl Future<Output = ()>,
    mut seen: impl FnMut(&Event),
    mut stored: impl FnMut(Recorded),
) -> Served {
    let mut backlog = Backlog::default();
    // Readings that `medbox vitals add` records into the same database reach the dispenser
    // within a minute.
    let mut vitals_after = match recorder.as_deref() {
        Some(r) => crate::store::vitals::head(r.connection()).unwrap_or(0),
        None => 0,
    };
    let mut next_vitals = tokio::time::Instant::now() + VITALS_POLL;
    tokio::pin!(until);
    loop {
        let retry_in = async {
            if backlog.failing() {
                tokio::time::sleep(Duration::from_secs(1)).await
            } else {
                std::future::pending().await
            }
        };
        let health = tokio::select! {
            biased;
            ev = running.events.recv() => match ev {
                // While storage fails nothing is durable: the waiting dispense never hears so.
                Some(Event::Barrier { token }) => {
                    if !backlog.failing() {
                        token.0.notify_one();
                    }
                    None
                }
                Some(ev) => {
                    seen(&ev);
                    recorder
                        .as_deref_mut()
                        .map(|rec| backlog.record(rec, ev, clock.monotonic(), clock.now()))
                }
                None => break,
            },
            _ = retry_in => recorder.as_deref_mut().map(|rec| backlog.retry(rec)),
            req = async { outbox.as_deref_mut()?.recv().await }, if outbox.is_some() && recorder.is_some() => {
                match (req, recorder.as_deref()) {
                    (Some(req), Some(rec)) => req.answer(rec.connection()),
                    // The uplink has ended: nobody to answer any more.
                    _ => outbox = None,
                }
                None
            }
            // After the events above (the select is biased): every record the dispenser made
            // before it asked has reached the store, or waits in the backlog and is still in
            // the dispenser's memory.
            Some(()) = running.history_wanted.recv(), if recorder.is_some() => {
                if let Some(rec) = recorder.as_deref() {
                    match crate::store::doses::history(rec.connection()) {
                        Ok(h) => {
                            let _ = running.dispenser.send(DispenserCommand::tell(Command::HistoryLoaded(Box::new(h)))).await;
                        }
                        // The dispenser asks again a planning round later.
                        Err(e) => tracing::warn!("cannot read the dose history back: {e}"),
                    }
                }
                None
            }
            _ = tokio::time::sleep_until(next_vitals), if recorder.is_some() => {
                next_vitals += VITALS_POLL;
                if let Some(rec) = recorder.as_deref() {
                    match crate::store::vitals::foreign(rec.connection(), rec.boot_id(), vitals_after) {
                        Ok(found) => {
                            for (seq, reading) in found {
                                vitals_after = seq;
                                let _ = running.dispenser.send(DispenserCommand::tell(Command::VitalRecorded(reading))).await;
                            }
                        }
                        Err(e) => tracing::warn!("cannot read vitals added by others: {e}"),
                    }
                }
                None
            }
            _ = &mut until => break,
        };
        match health {
            Some(Health::Durable {
                recorded,
                recovered,
            }) => {
                recorded.into_iter().for_each(&mut stored);
                if recovered {
                    tracing::warn!("storage works again: the dispenser is unlocked");
                    let _ = running
                        .dispenser
                        .send(DispenserCommand::tell(Command::StorageLock(false)))
                        .await;
                }
            }
            Some(Health::Failing { newly, error }) => {
                if newly {
                    // Never carry on as if it had been recorded: lock the dispenser and sound
                    // the alarm; the fridge keeps running while we retry.
                    tracing::error!(
                        "storage failed ({error}): dispenser locked, fridge running, retrying for {GRACE:?}"
                    );
                    let _ = running
                        .dispenser
                        .send(DispenserCommand::tell(Command::StorageLock(true)))
                        .await;
                }
                if backlog.gave_up() {
                    break;
                }
            }
            None => {}
        }
    }
    let mut rest = running.stop().await;
    rest.close();
    while let Some(ev) = rest.recv().await {
        if let Event::Barrier { token } = &ev {
            token.0.notify_one();
            continue;
        }
        seen(&ev);
        if let Some(rec) = recorder.as_deref_mut() {
            if let Health::Durable { recorded, .. } =
                backlog.record(rec, ev, clock.monotonic(), clock.now())
            {
                recorded.into_iter().for_each(&mut stored);
            }
        }
    }
    let storage_failure = if backlog.failing() {
        let (error, unrecorded) = backlog.into_parts();
        // Readings the recorder held for a group commit are older than anything the backlog
        // holds.
        let mut all = recorder.map(Recorder::take_held).unwrap_or_default();
        all.extend(unrecorded);
        error.map(|e| (e, all))
    } else {
        None
    };
    Served { storage_failure }
}
