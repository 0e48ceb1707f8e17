//! The machine the agent runs on: PID 1's boot duties, the kernel command line,
//! modules, the steps that change the machine (behind [`machine::Machine`]), and
//! power-off.

pub mod boot;
pub mod cmdline;
pub mod fatal;
pub mod guest;
pub mod machine;
pub mod modules;
pub mod netdev;
pub mod network;
pub mod power;
pub mod switch_root;
pub mod uevent;
