//! Which outbox row each unacknowledged publish carries, by the packet id the MQTT client gave it.
//!
//! A PUBACK names only a packet id, and deleting the wrong row on it loses a message (perhaps an
//! alarm) for good. rumqttc assigns the id when it writes a publish and reports it in an
//! `Outgoing::Publish` event, in the order the publishes were handed to it; so what we hand over
//! is queued here in that order and bound to its id when the event comes. The pairing only holds
//! within one connection: the uplink drops the event loop's leftover events and queued requests
//! when a connection ends or begins, and the window forgets every id then. A late or stale
//! acknowledgement can then only miss (the row goes again and is de-duplicated by its message
//! id), never delete a row it did not carry.

use std::collections::{HashMap, HashSet, VecDeque};

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

/// Publishes handed to the client on the current connection: those waiting for their packet id,
/// and those with one, waiting for their acknowledgement.
#[derive(Debug)]
pub struct Window {
    max_rows: usize,
    max_answers: usize,
    unbound: VecDeque<Carried>,
    by_pkid: HashMap<u16, Carried>,
    rows: HashSet<i64>,
    answers: usize,
    statuses: usize,
}

impl Window {
    /// Room for `max_rows` outbox rows, `max_answers` BUSY answers and two status messages
    /// (`online`, then at the end `offline`) in flight at once: each kind has a share of its
    /// own, so a backlog never keeps `offline` from going out.
    pub fn new(max_rows: usize, max_answers: usize) -> Self {
        Self {
            max_rows: max_rows.max(1),
            max_answers,
            unbound: VecDeque::new(),
            by_pkid: HashMap::new(),
            rows: HashSet::new(),
            answers: 0,
            statuses: 0,
        }
    }

    /// Most publishes in flight at once: the client's own in-flight limit must be at least
    /// this, so that it never holds back what the window let through.
    pub fn capacity(&self) -> u16 {
        u16::try_from(self.max_rows + self.max_answers + 2).unwrap_or(u16::MAX)
    }

    /// Makes room for `what`, which is then handed to the client; false when its share of the
    /// window is full (or `what` is a row already in flight: one row is never out twice on one
    /// connection).
    pub fn reserve(&mut self, what: Carried) -> bool {
        let room = match what {
            Carried::Row(id) => self.rows.len() < self.max_rows && !self.rows.contains(&id),
            Carried::Answer => self.answers < self.max_answers,
            Carried::Status => self.statuses < 2,
        };
        if room {
            match what {
                Carried::Row(id) => {
                    self.rows.insert(id);
                }
                Carried::Answer => self.answers += 1,
                Carried::Status => self.statuses += 1,
            }
            self.unbound.push_back(what);
        }
        room
    }

    /// Gives back the room of the last reservation, whose publish the client did not take.
    pub fn unreserve(&mut self) {
        if let Some(what) = self.unbound.pop_back() {
            self.release(what);
        }
    }

    /// The client wrote the next publish handed to it under `pkid`.
    pub fn bound(&mut self, pkid: u16) {
        if let Some(what) = self.unbound.pop_front() {
            // rumqttc reuses an id only after its acknowledgement, which removed it here.
            if let Some(stale) = self.by_pkid.insert(pkid, what) {
                self.release(stale);
            }
        }
    }

    /// The broker acknowledged `pkid`: what it carried, freed; None for an id not in use (a
    /// duplicate or stale acknowledgement), which changes nothing.
    pub fn acknowledged(&mut self, pkid: u16) -> Option<Carried> {
        let what = self.by_pkid.remove(&pkid)?;
        self.release(what);
        Some(what)
    }

    fn release(&mut self, what: Carried) {
        match what {
            Carried::Row(id) => {
                self.rows.remove(&id);
            }
            Carried::Answer => self.answers -= 1,
            Carried::Status => self.statuses -= 1,
        }
    }

    /// The connection is gone, and with it every id: whatever was in flight goes again.
    pub fn forget(&mut self) {
        self.unbound.clear();
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_acknowledgement_frees_only_the_row_its_packet_carried() {
        let mut w = Window::new(2, 1);
        assert!(w.reserve(Carried::Row(10)));
        assert!(w.reserve(Carried::Row(11)));
        assert!(!w.reserve(Carried::Row(12)), "two rows at most");
        assert!(!w.reserve(Carried::Row(10)), "a row is never out twice");
        w.bound(7);
        w.bound(8);
        assert_eq!(w.acknowledged(8), Some(Carried::Row(11)));
        assert!(w.has_row(10) && !w.has_row(11));
        assert_eq!(
            w.acknowledged(8),
            None,
            "a duplicate acknowledgement changes nothing"
        );
        assert!(w.has_row(10));
    }

    #[test]
    fn after_a_lost_connection_a_stale_acknowledgement_deletes_nothing() {
        let mut w = Window::new(4, 1);
        assert!(w.reserve(Carried::Row(1)));
        w.bound(1);
        w.forget();
        assert_eq!(w.acknowledged(1), None);
        // The row goes again on the new connection, and may well get the same id there.
        assert!(w.reserve(Carried::Row(2)));
        assert!(w.reserve(Carried::Row(1)));
        w.bound(1);
        w.bound(2);
        assert_eq!(w.acknowledged(1), Some(Carried::Row(2)));
        assert_eq!(w.acknowledged(2), Some(Carried::Row(1)));
    }

    #[test]
    fn status_always_finds_room_when_rows_and_answers_fill_theirs() {
        let mut w = Window::new(3, 2);
        for id in 0..3 {
            assert!(w.reserve(Carried::Row(id)));
        }
        assert!(w.reserve(Carried::Answer) && w.reserve(Carried::Answer));
        assert!(!w.reserve(Carried::Answer));
        assert!(w.reserve(Carried::Status) && w.reserve(Carried::Status));
        assert_eq!(w.capacity(), 7);
    }

    #[test]
    fn a_publish_the_client_did_not_take_gives_its_room_back() {
        let mut w = Window::new(1, 0);
        assert!(w.reserve(Carried::Row(5)));
        w.unreserve();
        assert!(!w.has_row(5));
        assert!(w.reserve(Carried::Row(6)));
        w.bound(3);
        assert_eq!(w.acknowledged(3), Some(Carried::Row(6)));
    }

    #[derive(Clone, Debug)]
    enum Step {
        Send(i64),
        Answer,
        Status,
        /// The client writes the oldest publish not yet written, under a free id.
        Write,
        /// Acknowledge the n-th id written so far (stale, duplicate or live).
        Ack(usize),
        /// Acknowledge any id at all.
        AckAny(u16),
        Drop,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0i64..40).prop_map(Step::Send),
            1 => Just(Step::Answer),
            1 => Just(Step::Status),
            4 => Just(Step::Write),
            4 => (0usize..200).prop_map(Step::Ack),
            1 => (0u16..30).prop_map(Step::AckAny),
            1 => Just(Step::Drop),
        ]
    }

    proptest! {
        /// Against a model of the client (publishes written in the order handed over, each
        /// under an id not in use on this connection) and of the broker (acknowledgements of
        /// ids of this connection or earlier ones, repeated or made up): an acknowledgement
        /// frees exactly what was written under that id on this connection and not
        /// acknowledged since; the window never holds more than it was given.
        #[test]
        fn no_acknowledgement_frees_a_row_its_packet_did_not_carry(
            steps in proptest::collection::vec(step(), 1..300)
        ) {
            let mut w = Window::new(5, 2);
            // Handed to the client, not yet written.
            let mut handed: VecDeque<Carried> = VecDeque::new();
            // Every id written, on this connection or an earlier one.
            let mut written: Vec<u16> = Vec::new();
            // What each id in use on this connection carries.
            let mut live: HashMap<u16, Carried> = HashMap::new();
            for s in steps {
                match s {
                    Step::Send(_) | Step::Answer | Step::Status => {
                        let (what, limit) = match s {
                            Step::Send(id) => (Carried::Row(id), 5),
                            Step::Answer => (Carried::Answer, 2),
                            _ => (Carried::Status, 2),
                        };
                        let same = |c: &Carried| match (c, what) {
                            (Carried::Row(_), Carried::Row(_)) => true,
                            (a, b) => *a == b,
                        };
                        let out = live.values().chain(handed.iter()).filter(|c| same(c)).count();
                        let twice = matches!(what, Carried::Row(_))
                            && live.values().chain(handed.iter()).any(|c| *c == what);
                        let room = out < limit && !twice;
                        prop_assert_eq!(w.reserve(what), room, "{:?}", what);
                        if room {
                            handed.push_back(what);
                        }
                    }
                    Step::Write => {
                        if let Some(what) = handed.pop_front() {
                            let pkid = (1u16..).find(|p| !live.contains_key(p)).unwrap();
                            w.bound(pkid);
                            live.insert(pkid, what);
                            written.push(pkid);
                        }
                    }
                    Step::Ack(n) => {
                        if let Some(&p) = written.get(n % written.len().max(1)) {
                            prop_assert_eq!(w.acknowledged(p), live.remove(&p));
                        }
                    }
                    Step::AckAny(p) => {
                        prop_assert_eq!(w.acknowledged(p), live.remove(&p));
                    }
                    Step::Drop => {
                        w.forget();
                        live.clear();
                        handed.clear();
                    }
                }
                let rows = |c: &&Carried| matches!(c, Carried::Row(_));
                prop_assert_eq!(w.rows(), live.values().chain(handed.iter()).filter(rows).count());
                for what in live.values().chain(handed.iter()) {
                    if let Carried::Row(id) = what {
                        prop_assert!(w.has_row(*id), "row {} lost track of", id);
                    }
                }
            }
        }
    }
}
