//! The one scheduler: workers for every teacher (its `concurrency()` each, taking up to
//! `batch_size()` requests at a time for engines that batch) pull from one queue, retry as the
//! policy says, and hand results back in completion order. `distill generate` submits as it goes
//! (first-pass-wins sends more samples for a prompt only after its first ones fail); eval submits
//! a fixed list ([`dispatch`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::retry::RetryPolicy;
use super::{ChatRequest, Completion, Teacher};
use crate::error::BackendError;

/// One finished request.
pub struct Done<T> {
    /// What the caller submitted it with.
    pub tag: T,
    pub result: Result<Completion, BackendError>,
    /// Attempts made (1 = no retry).
    pub tries: u32,
    /// Index of the teacher that answered, in the list the pool was started with.
    pub teacher: usize,
}

type Queue<T> = Arc<Mutex<VecDeque<(T, ChatRequest)>>>;

/// Workers over a shared queue; stopped (and joined) on [`Pool::shutdown`] or drop.
pub struct Pool<T> {
    queue: Queue<T>,
    rx: mpsc::Receiver<Done<T>>,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

/// A teacher that panics (a local engine's bug, an id past the embedding) fails its requests
/// for good, instead of taking its worker down and leaving the caller with fewer answers.
fn panicked(p: Box<dyn std::any::Any + Send>) -> BackendError {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    BackendError::Panicked(msg)
}

fn no_panic(
    f: impl FnOnce() -> Result<Completion, BackendError>,
) -> Result<Completion, BackendError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| Err(panicked(p)))
}

impl<T: Send + 'static> Pool<T> {
    pub fn start(teachers: &[Arc<dyn Teacher>], policy: &RetryPolicy) -> Self {
        let queue: Queue<T> = Arc::new(Mutex::new(VecDeque::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let mut handles = Vec::new();
        for (ti, t) in teachers.iter().enumerate() {
            for w in 0..t.concurrency() {
                let (t, queue, tx, stop, policy) =
                    (t.clone(), queue.clone(), tx.clone(), stop.clone(), policy.clone());
                handles.push(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let jobs: Vec<(T, ChatRequest)> = {
                            let mut q = queue.lock().unwrap();
                            let k = t.batch_size().min(q.len());
                            q.drain(..k).collect()
                        };
                        if jobs.is_empty() {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                        if jobs.len() == 1 {
                            let (tag, req) = jobs.into_iter().next().expect("one job");
                            let jitter = req.seed.unwrap_or(0) ^ ((w as u64) << 32);
                            let (result, attempts) =
                                policy.run(jitter, || no_panic(|| t.complete(&req)));
                            let done = Done { tag, result, tries: attempts.tries, teacher: ti };
                            if tx.send(done).is_err() {
                                return;
                            }
                        } else {
                            let (tags, reqs): (Vec<T>, Vec<ChatRequest>) = jobs.into_iter().unzip();
                            let results =
                                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    t.complete_many(&reqs)
                                })) {
                                    Ok(r) => r,
                                    Err(p) => vec![Err(panicked(p)); reqs.len()],
                                };
                            for (tag, result) in tags.into_iter().zip(results) {
                                if tx.send(Done { tag, result, tries: 1, teacher: ti }).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }));
            }
        }
        Pool { queue, rx, stop, handles }
    }

    pub fn submit(&self, tag: T, req: ChatRequest) {
        self.queue.lock().unwrap().push_back((tag, req));
    }

    /// The next finished request; `None` only if every worker is gone.
    pub fn recv(&self) -> Option<Done<T>> {
        self.rx.recv().ok()
    }

    /// Drop queued requests, stop the workers after their current request, join them.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.queue.lock().unwrap().clear();
        // Each worker stops after its current request (sends never block: the channel is
        // unbounded).
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl<T> Drop for Pool<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut q) = self.queue.lock() {
            q.clear();
        }
    }
}

/// Run every request; `on_done(index, result)` is called on the caller's thread as they finish.
pub fn dispatch(
    teachers: &[Arc<dyn Teacher>],
    reqs: Vec<ChatRequest>,
    policy: &RetryPolicy,
    mut on_done: impl FnMut(usize, Result<Completion, BackendError>),
) {
    let n = reqs.len();
    let pool = Pool::start(teachers, policy);
    for (i, r) in reqs.into_iter().enumerate() {
        pool.submit(i, r);
    }
    for _ in 0..n {
        match pool.recv() {
            Some(d) => on_done(d.tag, d.result),
            None => break,
        }
    }
    pool.shutdown();
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_data::{EndpointKind, Message, Role};

    /// A teacher whose engine panics on every request.
    struct Panics {
        batch: usize,
    }

    impl Teacher for Panics {
        fn complete(&self, _: &ChatRequest) -> Result<Completion, BackendError> {
            panic!("index 49152 out of bounds")
        }
        fn batch_size(&self) -> usize {
            self.batch
        }
        fn kind(&self) -> EndpointKind {
            EndpointKind::Synthetic
        }
        fn model(&self) -> String {
            "panics".into()
        }
        fn describe(&self) -> String {
            "panics".into()
        }
    }

    /// A panicking teacher fails each request for good, one at a time or batched, and every
    /// request is still answered (a panic took the worker down and the caller saw fewer answers).
    #[test]
    fn a_panicking_teacher_fails_its_requests_and_answers_every_one() {
        for batch in [1, 4] {
            let teachers: Vec<Arc<dyn Teacher>> = vec![Arc::new(Panics { batch })];
            let req = ChatRequest {
                messages: vec![Message::new(Role::User, "1+1?")],
                n: 1,
                sampling: Default::default(),
                seed: None,
                logprobs: None,
            };
            let mut answers = Vec::new();
            dispatch(&teachers, vec![req; 6], &RetryPolicy::default(), |i, r| answers.push((i, r)));
            assert_eq!(answers.len(), 6, "batch {batch}");
            for (_, r) in answers {
                let e = r.expect_err("an error");
                assert!(!e.retryable());
                assert!(e.to_string().contains("panicked: index 49152 out of bounds"), "{e}");
            }
        }
    }
}
