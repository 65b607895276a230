//! guestgate: a reverse proxy that brings guest access (external collaboration) to wikis
//! that lack it. See README.md and docs/ARCHITECTURE.md.
//!
//! The modules are layers, listed here from the bottom up; each uses only layers listed
//! above it (`tests/architecture.rs` checks this).

pub mod admin;
pub mod audit;
pub mod changes;
pub mod cli;
pub mod config;
pub mod directory;
pub mod files;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod pipeline;
pub mod policy;
pub mod routes;
pub mod server;
pub mod shared;
pub mod snapshot;
pub mod telemetry;
