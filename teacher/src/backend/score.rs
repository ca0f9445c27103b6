//! A teacher behind an endpoint as the scorer of an on-policy run: each (prompt, completion) is
//! one `/v1/completions` request with `prompt_logprobs` ([`OpenAiClient::score_tokens`]), sent
//! `concurrency` at a time and retried like any other request.

use std::sync::Mutex;

use distill_data::TokenLogprobs;
use distill_models::score::{ScoreRequest, Scorer};

use super::openai::OpenAiClient;
use super::retry::RetryPolicy;

pub struct EndpointScorer {
    pub client: OpenAiClient,
    pub policy: RetryPolicy,
}

impl Scorer for EndpointScorer {
    fn score(&self, reqs: &[ScoreRequest], k: usize) -> distill_models::Result<Vec<TokenLogprobs>> {
        use super::Teacher;
        let out: Vec<Mutex<Option<Result<TokenLogprobs, String>>>> =
            reqs.iter().map(|_| Mutex::new(None)).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let workers = self.client.concurrency().clamp(1, reqs.len().max(1));
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(r) = reqs.get(i) else { break };
                        let (got, attempts) = self.policy.run(i as u64 + 1, || {
                            self.client.score_tokens(&r.prompt, &r.completion, k)
                        });
                        let got =
                            got.map_err(|e| format!("{e} (after {} attempt(s))", attempts.tries));
                        *out[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(got);
                    }
                });
            }
        });
        out.into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .expect("every request ran")
                    .map_err(|e| distill_models::Error::Generate(format!("scoring: {e}")))
            })
            .collect()
    }

    fn model(&self) -> String {
        use super::Teacher;
        self.client.model()
    }

    fn describe(&self) -> String {
        use super::Teacher;
        self.client.describe()
    }

    fn endpoint_kind(&self) -> distill_data::EndpointKind {
        distill_data::EndpointKind::OpenaiChat
    }
}
