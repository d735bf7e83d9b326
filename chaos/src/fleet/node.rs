//! One member of a fleet, a process on this machine or a container on a network of its own,
//! and the faults a scenario injects into it.

use std::time::Duration;

use crate::docker::Container;
use testkit::procs::Proc;

/// A gateway, cache node or Redis server of a fleet.
pub enum Node {
    /// A process on loopback.
    Process(Proc),
    /// A container: a host of its own on the fleet's network.
    Container(Container),
}

impl Node {
    /// SIGKILL; its disk stays.
    pub fn kill(&mut self) {
        match self {
            Self::Process(p) => p.kill(),
            Self::Container(c) => c.kill(),
        }
    }

    /// Starts it again with the same arguments (killing it first if it runs).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Process(p) => Ok(p.restart()?),
            Self::Container(c) => c.restart(),
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        match self {
            Self::Process(p) => p.terminate(grace),
            Self::Container(c) => c.stop(grace),
        }
    }

    /// Freezes it (SIGSTOP; a container's cgroup freezer).
    pub fn pause(&mut self) {
        match self {
            Self::Process(p) => p.pause(),
            Self::Container(c) => c.pause(),
        }
    }

    /// Thaws it.
    pub fn resume(&mut self) {
        match self {
            Self::Process(p) => p.resume(),
            Self::Container(c) => c.unpause(),
        }
    }

    /// A process's id while it runs (a container's processes are not measured from here).
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Process(p) => p.pid(),
            Self::Container(_) => None,
        }
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        match self {
            Self::Process(p) => p.log(),
            Self::Container(c) => c.log(),
        }
    }

    /// The container, when it is one.
    pub fn container(&mut self) -> Option<&mut Container> {
        match self {
            Self::Process(_) => None,
            Self::Container(c) => Some(c),
        }
    }
}
