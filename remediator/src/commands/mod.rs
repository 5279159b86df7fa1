//! Commands run by hand from the command line, besides serving the webhook API.

pub mod gaps;
