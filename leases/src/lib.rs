//! etcd recipes that every lock in Lockstep is built from.
//!
//! Owns the etcd client every request goes through (`Etcd`: failover
//! between members, a deadline on every request), the session lease and its
//! loss signal, the fenced mutex under
//! `/lockstep/v1/locks/`, the per-cluster disruption-budget semaphore, the
//! coordinator election, agent registration and the append-only audit log.
//!
//! Must never: hold a lock without a lease (every lock expires by itself when
//! its holder dies), act for a holder after its session is lost, or send an
//! etcd request that could wait forever.
//!
//! ```text
//! Etcd (one client per member; failed members leave rotation, are probed)
//!   │
//! Session (lease + keep-alive) ──┬── FencedMutex   one holder; token = create revision
//!        │ lost() fires before   ├── Semaphore     N holders, FIFO waiters, each
//!        │ the lease can expire  │                 watching only its predecessor
//!        │ on the server         ├── Election      FencedMutex on /lockstep/v1/leader
//!        ▼                       └── Registration  /lockstep/v1/agents/<agent>
//!   holder stops acting          AuditLog: /lockstep/v1/audit/<seq>, never leased
//! ```

mod audit;
mod election;
mod etcd;
mod holder;
pub mod keys;
mod mutex;
mod registration;
mod semaphore;
mod session;
mod task;

pub use audit::{AuditError, AuditLog, AuditRecord};
pub use election::{Election, ElectionError, Leadership};
pub use etcd::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_DEADLINE, EndpointError,
    Etcd, EtcdAccess, EtcdAccessKeys, EtcdMetrics, EtcdTiming, EtcdUser, MemberId, RequestOutcome,
    check_endpoint, may_succeed_later,
};
pub use holder::Holder;
pub use mutex::{FencedMutex, FencingToken, LockError, LockInfo, LockState, MutexGuard};
pub use registration::{Claim, HeldBy, Registration, RegistrationError};
pub use semaphore::{BudgetPolicy, DisruptionBudget, SemaphoreError, SlotGuard, SlotInfo};
pub use session::{LossReason, Session, SessionError, Ttl};
