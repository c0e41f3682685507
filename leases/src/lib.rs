//! etcd recipes that every lock in Lockstep is built from.
//!
//! Owns the session lease and its loss signal, the fenced mutex under
//! `/lockstep/v1/locks/`, the per-cluster disruption-budget semaphore, the
//! coordinator election, agent registration and the append-only audit log.
//!
//! Must never: hold a lock without a lease (every lock expires by itself when
//! its holder dies), or act for a holder after its session is lost.
