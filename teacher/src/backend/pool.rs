//! Send a list of requests to one or more teachers with per-teacher concurrency (and batching
//! for engines that batch), retrying as the policy says. Results arrive in completion order.

use std::collections::VecDeque;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use super::retry::RetryPolicy;
use super::{ChatRequest, Completion, Teacher};
use crate::error::BackendError;

/// Run every request; `on_done(index, result)` is called on the caller's thread as they finish.
pub fn dispatch(
    teachers: &[Arc<dyn Teacher>],
    reqs: Vec<ChatRequest>,
    policy: &RetryPolicy,
    mut on_done: impl FnMut(usize, Result<Completion, BackendError>),
) {
    let n = reqs.len();
    let queue: Arc<Mutex<VecDeque<(usize, ChatRequest)>>> =
        Arc::new(Mutex::new(reqs.into_iter().enumerate().collect()));
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for t in teachers {
        for w in 0..t.concurrency() {
            let (t, queue, tx, policy) = (t.clone(), queue.clone(), tx.clone(), policy.clone());
            handles.push(std::thread::spawn(move || {
                loop {
                    let jobs: Vec<(usize, ChatRequest)> = {
                        let mut q = queue.lock().unwrap();
                        let k = t.batch_size().min(q.len());
                        q.drain(..k).collect()
                    };
                    if jobs.is_empty() {
                        return;
                    }
                    if jobs.len() == 1 {
                        let (i, r) = &jobs[0];
                        let (res, _) = policy.run((*i as u64) << 8 ^ w as u64, || t.complete(r));
                        if tx.send((*i, res)).is_err() {
                            return;
                        }
                    } else {
                        let reqs: Vec<ChatRequest> = jobs.iter().map(|j| j.1.clone()).collect();
                        for ((i, _), res) in jobs.iter().zip(t.complete_many(&reqs)) {
                            if tx.send((*i, res)).is_err() {
                                return;
                            }
                        }
                    }
                }
            }));
        }
    }
    drop(tx);
    for _ in 0..n {
        match rx.recv() {
            Ok((i, r)) => on_done(i, r),
            Err(_) => break,
        }
    }
    for h in handles {
        let _ = h.join();
    }
}
