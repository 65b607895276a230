//! HTTP vocabulary shared by every layer above it: response bodies, the canonical form of a
//! request path, the one cookie parser, small gateway pages and the one outbound client.
//! Nothing here knows about guests, routes or policies.

pub mod body;
pub mod canonical;
pub mod client;
pub mod cookies;
pub mod page;
pub mod pool;

/// The gateway's own namespace (browser sign-in): answered by the gateway, never
/// classified by the route profile, never forwarded.
pub mod gateway_paths {
    pub const PREFIX: &str = "/_guestgate/";
    pub const LOGIN: &str = "/_guestgate/login";
    pub const LOGOUT: &str = "/_guestgate/logout";
    pub const SIGNED_OUT: &str = "/_guestgate/signed-out";

    /// Whether a canonical path lies in the gateway's own namespace.
    pub fn contains(path: &str) -> bool {
        path.starts_with(PREFIX) || path == PREFIX.trim_end_matches('/')
    }
}
