//! A runtime for bulk work: the IngestLogs streams. Its threads run at a
//! lower CPU priority than the server's own, so that while streams keep
//! every core busy decoding entries, a read that arrives still gets a core
//! at once instead of waiting behind the streams' messages.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};
use tokio::task::{JoinError, JoinHandle};

/// Nice value of the background threads (the server's threads keep 0).
/// At 10, Linux's scheduler gives a busy background thread about a tenth
/// of a core that a server thread also wants.
const NICE: i32 = 10;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// Runs `future` on the background runtime, which starts on first use with
/// one worker thread, and returns its output, or the error of a
/// task that panicked. Dropping the returned future cancels `future`, as
/// it would if `future` ran on the caller's runtime.
pub async fn run<F>(future: F) -> Result<F::Output, JoinError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let runtime = RUNTIME.get_or_init(|| {
        Builder::new_multi_thread()
            .thread_name("background")
            // A second thread raised the server's peak memory under one
            // flooding stream by about 10 MiB (`tests/limits.rs`). With one,
            // 32 streams still store over 90% of one stream's rate.
            .worker_threads(1)
            .enable_all()
            .on_thread_start(lower_priority)
            .build()
            .expect("cannot start the background runtime")
    });
    let mut task = AbortOnDrop(runtime.spawn(future));
    (&mut task.0).await
}

/// Aborts its task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lowers the calling thread's CPU priority. On Linux a nice value belongs
/// to one thread; elsewhere `setpriority` would lower the whole process, so
/// threads keep their priority there.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority only reads its arguments, and `who = 0` names
    // the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, NICE);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn runs_on_lower_priority_threads() {
        let (name, nice) = run(async {
            let name = std::thread::current().name().map(str::to_string);
            // SAFETY: getpriority only reads its arguments.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            (name, nice)
        })
        .await
        .expect("the task failed");
        assert_eq!(name.as_deref(), Some("background"));
        if cfg!(target_os = "linux") {
            assert_eq!(nice, NICE);
        }
    }

    #[tokio::test]
    async fn dropping_the_call_cancels_the_task() {
        /// Sets its flag when the task's future is dropped.
        struct Dropped(Arc<AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = Dropped(Arc::clone(&dropped));
        let call = run(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        let ended = tokio::time::timeout(Duration::from_millis(50), call).await;
        assert!(ended.is_err(), "a pending task ended");
        for _ in 0..100 {
            if dropped.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the task still runs after its call was dropped");
    }
}
