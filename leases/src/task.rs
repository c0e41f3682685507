//! `OwnedTask`: a background task that ends when its owner is dropped, so
//! no keep-alive or watcher outlives the value it serves.

use tokio::task::JoinHandle;

#[derive(Debug)]
pub(crate) struct OwnedTask(JoinHandle<()>);

impl OwnedTask {
    pub(crate) fn spawn(future: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(future))
    }
}

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}
