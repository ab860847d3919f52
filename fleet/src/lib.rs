//! The fleet side of medbox: a collector that archives what every appliance publishes into
//! PostgreSQL exactly once, and a witness that holds each device's signed checkpoints and
//! checks its chain as it arrives. A member of the appliance's workspace that reuses its
//! library (the wire protocol, checkpoint signatures, chain verification, the schedule parser,
//! the command payloads), so the appliance itself never links a database client or a web
//! server. The portal serves the archive to caregivers and pharmacists.

pub mod archive;
pub mod bench;
pub mod bench_pages;
pub mod broker;
pub mod collect;
pub mod ingest;
pub mod portal;
pub mod repair;
pub mod report;
pub mod verify;
pub mod witness;
