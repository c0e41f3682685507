//! `Place`: where a fixture's process runs and which address it listens
//! on. `Place::loopback()` (the default everywhere) is this host's own
//! namespace and 127.0.0.1; `Place::from(&LabNode)` is a node of a
//! [`NetnsLab`](crate::NetnsLab): its `ip netns exec` prefix and its address.
//!
//! Must never: change where a fixture runs unless a test asks for it.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use crate::LabNode;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// Put before the program (e.g. `ip netns exec NS`); empty: none.
    prefix: Vec<String>,
    ip: IpAddr,
}

impl Place {
    /// Today's behaviour: this namespace, listening on 127.0.0.1.
    pub fn loopback() -> Self {
        Self::local(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// This namespace, listening on `ip`.
    pub fn local(ip: IpAddr) -> Self {
        Self {
            prefix: Vec::new(),
            ip,
        }
    }

    /// The address a fixture placed here listens on.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The command prefix (empty for loopback).
    pub fn prefix(&self) -> &[String] {
        &self.prefix
    }

    /// A command that runs `program` here (through the prefix, if any).
    pub(crate) fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self.prefix.split_first() {
            None => Command::new(program),
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(program);
                command
            }
        }
    }

    /// How `program` is named in an error message: with its prefix.
    pub(crate) fn describe(&self, program: &str) -> String {
        if self.prefix.is_empty() {
            program.to_owned()
        } else {
            format!("{} {program}", self.prefix.join(" "))
        }
    }
}

impl Default for Place {
    fn default() -> Self {
        Self::loopback()
    }
}

impl From<&LabNode> for Place {
    fn from(node: &LabNode) -> Self {
        Self {
            prefix: node.exec_prefix(),
            ip: IpAddr::V4(node.ip),
        }
    }
}
