//! The integration tests, in one binary: each module starts the real gateway (or runs a
//! real engine) against real HTTP peers on loopback. `support` holds the stand-ins and
//! helpers they share, by role.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod support;

mod admin;
mod architecture;
mod audit;
mod browser_signin;
mod bundles;
mod canonical;
mod cli;
mod content_cache;
mod guests;
mod hostile;
mod hostile_cases;
mod identity;
mod journeys;
mod lifecycle;
mod limits;
mod mediawiki;
mod operations;
mod parking;
mod policy_cases;
mod policy_equivalence;
mod proxy;
mod rewrite;
mod signin;
