//! The fleet side of medbox: a collector that archives what every appliance publishes into
//! PostgreSQL exactly once, and a witness that holds each device's signed checkpoints and
//! checks its chain as it arrives. A member of the appliance's workspace that reuses its
//! library (the wire protocol, checkpoint signatures, chain verification), so the appliance
//! itself never links a database client.

pub mod archive;
pub mod bench;
pub mod broker;
pub mod collect;
pub mod ingest;
pub mod verify;
pub mod witness;
