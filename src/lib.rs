//! guestgate: a reverse proxy that brings guest access (external collaboration) to wikis
//! that lack it. See README.md and the contract in docs/.

pub mod access;
pub mod admin;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod directory;
pub mod error;
pub mod gateway;
pub mod http_client;
pub mod notify;
pub mod pipeline;
pub mod policy;
pub mod reload;
pub mod routes;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod workers;
