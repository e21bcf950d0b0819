//! One module per command, each with its arguments and a `run` returning the exit status.

pub mod bench;
pub mod case;
pub mod check_state;
pub mod corpus;
pub mod exec_cases;
pub mod fuzz;
pub mod hub;
pub mod lab;
pub mod lab_migrate;
pub mod migrate;
pub mod minimize;
pub mod probe;
pub mod replay;
pub mod report;
pub mod repro;
