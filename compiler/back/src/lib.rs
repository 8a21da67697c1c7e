//! placeholder

pub mod clif;
pub mod cstyle;
pub mod cuda;
pub mod math;
pub mod opencl;
