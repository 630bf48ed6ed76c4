//! Small helpers with no knowledge of the sidecar: an order-keeping JSON map, time
//! formatting, query-string encoding, the bearer token file, input files (`-`:
//! stdin). Every layer may use them; they use nothing of the crate.

pub mod input;
pub mod ordered;
pub mod query;
pub mod timefmt;
pub mod token;
