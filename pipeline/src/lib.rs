//! Shared library of dmsguard: configuration, connections and the domain logic both binaries use.

pub mod aws;
pub mod config;
pub mod db;
pub mod maintenance;
pub mod secret;
pub mod service;
pub mod system_views;
