//! The dmsguard lab: a harness over the real lab services, and the DMS simulator.

pub mod alerting;
pub mod audit;
pub mod dashboard;
pub mod harness;
pub mod simulator;
pub mod stack;
