//! Guest-access changes: what each revision of the data document grants (`access`), and
//! the events and webhook deliveries that announce the differences (`notify`).

pub mod access;
pub mod notify;
