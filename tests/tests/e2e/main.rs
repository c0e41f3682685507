//! End-to-end tests against real processes. One binary, one module per
//! subject, all built on the harness in `lockstep_tests`.

mod etcd_harness;
