//! Shared library of dmsguard: configuration, connections and the domain logic both binaries use.

pub mod aws;
pub mod catalogue;
pub mod clock;
pub mod config;
pub mod content;
pub mod db;
pub mod ddl;
pub mod dms_tasks;
pub mod frontier;
pub mod gap_finder;
pub mod iam_auth;
pub mod maintenance;
pub mod preflight;
pub mod process;
pub mod reload;
pub mod replica;
pub mod report;
pub mod rewrite;
pub mod secret;
pub mod service;
pub mod staging;
pub mod statement_parser;
pub mod system_views;
pub mod tls;
pub mod type_translator;
pub mod web;
