//! Which outbox row each unacknowledged publish carries, keyed by a packet id we chose.
//!
//! A PUBACK names only a packet id, and deleting the wrong row on it loses a message (perhaps an
//! alarm) for good. rumqttc assigns packet ids itself and reports them in events that can be
//! left over from a dropped connection, so pairing them with our publishes by their order breaks
//! after a reconnect. Here the uplink picks the id when it publishes, the id names exactly one
//! message until its acknowledgement, and a lost connection forgets every id: a late or stale
//! acknowledgement can then only miss (the row goes again and is de-duplicated by its message
//! id), never delete a row it did not carry.

use std::collections::{HashMap, HashSet};

/// What a publish carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carried {
    /// An outbox row, deleted once acknowledged.
    Row(i64),
    /// A BUSY answer to a command the appliance could not take in.
    Answer,
    /// The retained `status` (`online` or `offline`).
    Status,
}

/// Packet ids in use on the current connection, and what each carries.
#[derive(Debug)]
pub struct Window {
    max_rows: usize,
    max_answers: usize,
    by_pkid: HashMap<u16, Carried>,
    rows: HashSet<i64>,
    answers: usize,
    statuses: usize,
    /// Where the search for a free id starts: ids are used round-robin, so an id is not reused
    /// right after its acknowledgement (a broker that acknowledged twice would find it free).
    next: u16,
}

impl Window {
    /// Room for `max_rows` outbox rows, `max_answers` BUSY answers and two status messages
    /// (`online`, then at the end `offline`) in flight at once: each kind has ids of its own,
    /// so a backlog never keeps `offline` from going out.
    pub fn new(max_rows: usize, max_answers: usize) -> Self {
        Self {
            max_rows: max_rows.max(1),
            max_answers,
            by_pkid: HashMap::new(),
            rows: HashSet::new(),
            answers: 0,
            statuses: 0,
            next: 1,
        }
    }

    /// The highest packet id this window hands out: the MQTT client's in-flight limit must be
    /// at least this, since its table of unacknowledged publishes is indexed by id.
    pub fn max_pkid(&self) -> u16 {
        u16::try_from(self.max_rows + self.max_answers + 2).unwrap_or(u16::MAX)
    }

    /// Takes a packet id for `what`, or None when its share of the window is full (or `what` is
    /// a row already in flight: one row is never out twice on one connection).
    pub fn take(&mut self, what: Carried) -> Option<u16> {
        let room = match what {
            Carried::Row(id) => self.rows.len() < self.max_rows && !self.rows.contains(&id),
            Carried::Answer => self.answers < self.max_answers,
            Carried::Status => self.statuses < 2,
        };
        if !room {
            return None;
        }
        let max = self.max_pkid();
        let pkid = (0..max)
            .map(|i| (self.next - 1 + i) % max + 1)
            .find(|p| !self.by_pkid.contains_key(p))?;
        self.next = pkid % max + 1;
        self.by_pkid.insert(pkid, what);
        match what {
            Carried::Row(id) => {
                self.rows.insert(id);
            }
            Carried::Answer => self.answers += 1,
            Carried::Status => self.statuses += 1,
        }
        Some(pkid)
    }

    /// The broker acknowledged `pkid`: what it carried, freed; None for an id not in use (a
    /// duplicate or stale acknowledgement), which must change nothing.
    pub fn acknowledged(&mut self, pkid: u16) -> Option<Carried> {
        let what = self.by_pkid.remove(&pkid)?;
        match what {
            Carried::Row(id) => {
                self.rows.remove(&id);
            }
            Carried::Answer => self.answers -= 1,
            Carried::Status => self.statuses -= 1,
        }
        Some(what)
    }

    /// The connection is gone, and with it every id: whatever was in flight goes again.
    pub fn forget(&mut self) {
        self.by_pkid.clear();
        self.rows.clear();
        self.answers = 0;
        self.statuses = 0;
    }

    /// Whether outbox row `id` is out and unacknowledged.
    pub fn has_row(&self, id: i64) -> bool {
        self.rows.contains(&id)
    }

    /// Outbox rows out and unacknowledged.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Whether another row would find room.
    pub fn rows_full(&self) -> bool {
        self.rows.len() >= self.max_rows
    }

    /// Whether nothing at all is unacknowledged.
    pub fn is_empty(&self) -> bool {
        self.by_pkid.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_acknowledgement_frees_only_the_row_its_packet_carried() {
        let mut w = Window::new(2, 1);
        let a = w.take(Carried::Row(10)).unwrap();
        let b = w.take(Carried::Row(11)).unwrap();
        assert_ne!(a, b);
        assert_eq!(w.take(Carried::Row(12)), None, "two rows at most");
        assert_eq!(w.take(Carried::Row(10)), None, "a row is never out twice");
        assert_eq!(w.acknowledged(b), Some(Carried::Row(11)));
        assert!(w.has_row(10) && !w.has_row(11));
        assert_eq!(
            w.acknowledged(b),
            None,
            "a duplicate acknowledgement changes nothing"
        );
        assert!(w.has_row(10));
    }

    #[test]
    fn after_a_lost_connection_a_stale_acknowledgement_deletes_nothing() {
        let mut w = Window::new(4, 1);
        let old = w.take(Carried::Row(1)).unwrap();
        w.forget();
        assert_eq!(w.acknowledged(old), None);
        // The row goes again on the new connection, under an id of its own.
        let new = w.take(Carried::Row(1)).unwrap();
        assert_eq!(w.acknowledged(new), Some(Carried::Row(1)));
    }

    #[test]
    fn status_always_finds_an_id_when_rows_and_answers_fill_theirs() {
        let mut w = Window::new(3, 2);
        for id in 0..3 {
            w.take(Carried::Row(id)).unwrap();
        }
        w.take(Carried::Answer).unwrap();
        w.take(Carried::Answer).unwrap();
        assert_eq!(w.take(Carried::Answer), None);
        let online = w.take(Carried::Status).unwrap();
        let offline = w.take(Carried::Status).unwrap();
        assert!(online <= w.max_pkid() && offline <= w.max_pkid());
    }

    #[derive(Clone, Debug)]
    enum Step {
        Send(i64),
        Answer,
        Status,
        /// Acknowledge the n-th id handed out so far (stale, duplicate or live).
        Ack(usize),
        /// Acknowledge an id never handed out on this connection.
        AckAny(u16),
        Drop,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0i64..40).prop_map(Step::Send),
            1 => Just(Step::Answer),
            1 => Just(Step::Status),
            4 => (0usize..200).prop_map(Step::Ack),
            1 => (0u16..100).prop_map(Step::AckAny),
            1 => Just(Step::Drop),
        ]
    }

    proptest! {
        /// Against a model that remembers which message each id went out with on the current
        /// connection: an acknowledgement frees a row only if that row went out under that id
        /// on this connection and was not acknowledged since; ids in use are distinct and in
        /// range; the window never holds more than it was given.
        #[test]
        fn no_acknowledgement_frees_a_row_its_packet_did_not_carry(
            steps in proptest::collection::vec(step(), 1..300)
        ) {
            let mut w = Window::new(5, 2);
            // Every id handed out, on this connection or an earlier one.
            let mut issued: Vec<u16> = Vec::new();
            // What each id in use on this connection carries.
            let mut live: HashMap<u16, Carried> = HashMap::new();
            for s in steps {
                match s {
                    Step::Send(id) => {
                        let what = Carried::Row(id);
                        let had = live.values().any(|c| *c == what);
                        let rows = live.values().filter(|c| matches!(c, Carried::Row(_))).count();
                        match w.take(what) {
                            Some(p) => {
                                prop_assert!(!had && rows < 5);
                                prop_assert!(p >= 1 && p <= w.max_pkid());
                                prop_assert!(live.insert(p, what).is_none(), "id {p} reused while live");
                                issued.push(p);
                            }
                            None => prop_assert!(had || rows >= 5),
                        }
                    }
                    Step::Answer | Step::Status => {
                        let (what, limit) = if matches!(s, Step::Answer) { (Carried::Answer, 2) } else { (Carried::Status, 2) };
                        let out = live.values().filter(|c| **c == what).count();
                        match w.take(what) {
                            Some(p) => {
                                prop_assert!(out < limit);
                                prop_assert!(live.insert(p, what).is_none());
                                issued.push(p);
                            }
                            None => prop_assert!(out >= limit, "{what:?} refused with room"),
                        }
                    }
                    Step::Ack(n) => {
                        if let Some(&p) = issued.get(n % issued.len().max(1)) {
                            let got = w.acknowledged(p);
                            prop_assert_eq!(got, live.remove(&p));
                        }
                    }
                    Step::AckAny(p) => {
                        prop_assert_eq!(w.acknowledged(p), live.remove(&p));
                    }
                    Step::Drop => {
                        w.forget();
                        live.clear();
                    }
                }
                for (p, what) in &live {
                    if let Carried::Row(id) = what {
                        prop_assert!(w.has_row(*id), "row {id} under id {p} lost track of");
                    }
                }
                prop_assert_eq!(w.rows(), live.values().filter(|c| matches!(c, Carried::Row(_))).count());
                prop_assert_eq!(w.is_empty(), live.is_empty());
            }
        }
    }
}
