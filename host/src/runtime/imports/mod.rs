//! Host implementations of the task world's imports, one file per WIT interface.

pub(crate) mod host_log;
