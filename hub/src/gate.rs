//! A bound on the planner's heavy reads, and their place behind sync: forecasts, the replenishment run, the
//! network stock pages and the stock screen. Each is CPU work over the demand history or every site's stock; eight planners
//! (or one script) asking in a loop would otherwise take every core, and a node's sync round trip, which
//! needs a core for a moment, would wait behind them (issue 17: with eight readers on two cores the sync
//! p99 was 20× the p99 without, with no lock held).
//!
//! So these reads run on the gate's own threads, at most one fewer than the machine has cores (at least
//! one, [`ReadGate::for_this_machine`]), each lowered to nice [`READ_NICE`] once when it starts (a thread's
//! priority cannot be raised back without privileges, so the work is moved to threads that keep it rather
//! than lowering the caller's). The scheduler then gives a waking sync session or intake writer the core
//! first. A read waits at most [`READ_WAIT_MAX_MS`] to start, with at most [`READS_QUEUED_MAX`] waiting;
//! past either it is `503 overloaded`.
//!
//! Written by hand rather than with a thread-pool crate: a bounded channel, a deadline per job and a
//! priority set once per thread are the whole of it.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use oms_service::Problem;

/// Longest a heavy read waits to start before `503 overloaded`, ms.
pub const READ_WAIT_MAX_MS: u64 = 10_000;
/// Heavy reads waiting for a thread; beyond this a read is `503 overloaded` at once.
pub const READS_QUEUED_MAX: usize = 256;
/// The nice value of the gate's threads (0 is the default; 19 the lowest priority).
pub const READ_NICE: i32 = 10;

/// A read on its way to a gate thread: started only before its deadline.
struct Job {
    deadline: Instant,
    run: Box<dyn FnOnce() + Send>,
}

/// See the module docs.
pub struct ReadGate {
    max: usize,
    wait: Duration,
    /// The queue to the gate's threads, which start with the first read.
    queue: OnceLock<Option<SyncSender<Job>>>,
}

impl std::fmt::Debug for ReadGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadGate").field("max", &self.max).field("wait", &self.wait).finish()
    }
}

/// What a job tells its caller: that it started, then what it answered.
enum Progress<T> {
    Started,
    Done(T),
}

impl ReadGate {
    /// At most `max` (at least 1) reads at once; a read waits at most `wait` to start.
    pub fn new(max: usize, wait: Duration) -> ReadGate {
        ReadGate { max: max.max(1), wait, queue: OnceLock::new() }
    }

    /// One fewer reads than this machine has cores, at least one; [`READ_WAIT_MAX_MS`].
    pub fn for_this_machine() -> ReadGate {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        ReadGate::new(cores.saturating_sub(1), Duration::from_millis(READ_WAIT_MAX_MS))
    }

    /// Most reads at once.
    pub fn max(&self) -> usize {
        self.max
    }

    fn queue(&self) -> Option<&SyncSender<Job>> {
        self.queue
            .get_or_init(|| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(READS_QUEUED_MAX);
                let rx = Arc::new(Mutex::new(rx));
                let mut started = 0;
                for n in 0..self.max {
                    let rx = rx.clone();
                    let spawned = std::thread::Builder::new().name(format!("oms-reads-{n}")).spawn(move || reader(&rx));
                    match spawned {
                        Ok(_) => started += 1,
                        Err(e) => tracing::error!(error = %e, "cannot start a planner-read thread"),
                    }
                }
                (started > 0).then_some(tx)
            })
            .as_ref()
    }

    /// `503 overloaded`: no read can start now.
    fn busy(&self) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("{} planner reads (forecasts, replenishment, network stock) are running; retry shortly", self.max),
        )
    }

    /// Runs `f` on one of the gate's threads and awaits its answer, holding no thread of the caller's
    /// meanwhile (an async worker goes on serving others while the read waits or runs); `503 overloaded` if
    /// it cannot start within the wait, `500` if it panicked. A caller that goes away (the request dropped)
    /// before the read started leaves it unrun.
    pub async fn read<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Problem> {
        let deadline = Instant::now() + self.wait;
        // Two messages at most, so a send from the gate's thread never waits.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Progress<T>>(2);
        let job = Job {
            deadline,
            run: Box::new(move || {
                if tx.try_send(Progress::Started).is_ok() {
                    let _ = tx.try_send(Progress::Done(f()));
                }
            }),
        };
        let Some(queue) = self.queue() else {
            return Err(Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no planner-read thread runs"));
        };
        match queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(self.busy()),
            Err(TrySendError::Disconnected(_)) => {
                return Err(Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the planner-read threads stopped",
                ));
            }
        }
        let failed = || Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the planner read failed");
        match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), rx.recv()).await {
            Ok(Some(Progress::Started)) => {}
            Ok(Some(Progress::Done(v))) => return Ok(v),
            Err(_) => return Err(self.busy()),
            Ok(None) => return Err(failed()),
        }
        // Started: the read itself is bounded by what it reads (pages, the index), not by this wait.
        match rx.recv().await {
            Some(Progress::Done(v)) => Ok(v),
            _ => Err(failed()),
        }
    }
}

/// A gate thread: lowers its own priority once, then runs jobs whose deadline has not passed (a job whose
/// caller gave up is dropped unrun). A job that panics is caught: the thread goes on.
fn reader(rx: &Mutex<Receiver<Job>>) {
    if let Err(e) = rustix::process::setpriority_process(None, READ_NICE) {
        tracing::warn!(error = %e, "cannot lower a planner-read thread's priority; reads compete with sync as equals");
    }
    loop {
        let job = match rx.lock().unwrap_or_else(PoisonError::into_inner).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        if Instant::now() >= job.deadline {
            continue;
        }
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job.run)).is_err() {
            tracing::error!("a planner read panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn no_more_than_max_reads_run_at_once_and_a_read_that_cannot_start_is_refused_after_its_wait() {
        let gate = Arc::new(ReadGate::new(2, Duration::from_secs(10)));
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (gate, now, most) = (gate.clone(), now.clone(), most.clone());
                tokio::spawn(async move {
                    let got = gate
                        .read(move || {
                            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(n, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            now.fetch_sub(1, Ordering::SeqCst);
                            i
                        })
                        .await
                        .unwrap();
                    assert_eq!(got, i);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2, "eight reads through a gate of two");

        // The one thread busy: a second read waits its 50 ms, then is refused (and never runs); once the
        // thread is free the next read runs.
        let tight = Arc::new(ReadGate::new(1, Duration::from_millis(50)));
        let (held, release) = std::sync::mpsc::channel::<()>();
        let (entered, inside) = tokio::sync::oneshot::channel::<()>();
        let holder = {
            let tight = tight.clone();
            tokio::spawn(async move {
                tight
                    .read(move || {
                        entered.send(()).unwrap();
                        release.recv().unwrap();
                    })
                    .await
                    .unwrap();
            })
        };
        inside.await.unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let refused = tight
            .read(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })
            .await
            .unwrap_err();
        assert_eq!((refused.status, refused.code), (503, "overloaded"));
        held.send(()).unwrap();
        holder.await.unwrap();
        assert_eq!(tight.read(|| 7).await.unwrap(), 7);
        assert_eq!(ran.load(Ordering::SeqCst), 0, "a read whose caller gave up is not run");
        // A read that panics answers 500, and the thread goes on.
        assert_eq!(tight.read(|| -> u8 { panic!("boom") }).await.unwrap_err().status, 500);
        assert_eq!(tight.read(|| 8).await.unwrap(), 8);
    }

    /// On a runtime of one thread, a read awaiting its answer leaves that thread free: the task that lets the
    /// read finish runs meanwhile. A read that blocked its caller's thread would wait for ever (here: the read
    /// gives up after 5 s and answers false).
    #[tokio::test(flavor = "current_thread")]
    async fn a_waiting_read_holds_no_thread_of_the_caller() {
        let gate = ReadGate::new(1, Duration::from_secs(10));
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let other = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            go.send(()).unwrap();
        });
        let finished = gate.read(move || wait.recv_timeout(Duration::from_secs(5)).is_ok()).await.unwrap();
        assert!(finished, "the other task could not run while the read waited");
        other.await.unwrap();
    }

    #[tokio::test]
    async fn the_gate_threads_run_at_a_lower_priority() {
        let gate = ReadGate::new(1, Duration::from_secs(10));
        let nice = gate.read(|| rustix::process::getpriority_process(None).unwrap()).await.unwrap();
        assert_eq!(nice, READ_NICE);
    }
}
