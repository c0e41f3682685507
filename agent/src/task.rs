//! `OwnedTask`: a background task that ends when its owner is dropped, so
//! no forwarder or watcher outlives what it serves.

use tokio::task::JoinHandle;

#[derive(Debug)]
pub struct OwnedTask(JoinHandle<()>);

impl OwnedTask {
    pub fn spawn(future: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(future))
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
