//! The identifiers that cross crate lines, each defined once: what a service,
//! an agent and a cluster are called, which release a host runs (or that it
//! runs none), and the fencing token that orders commands.
//!
//! Every constructor validates, so a value of these types is always
//! well-formed and bounded; parsing an untrusted string is the only way in.
//! Must never grow behaviour beyond naming: no IO, no policy.

mod digest;
mod installed;
mod name;
mod token;

pub use digest::{DIGEST_PREFIX, DigestError, ReleaseDigest};
pub use installed::Installed;
pub use name::{AgentId, ClusterName, NameError, ServiceName};
pub use token::FencingToken;
