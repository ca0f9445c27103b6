//! Retries with exponential backoff and full jitter, honouring `Retry-After`.

use std::time::Duration;

use crate::error::BackendError;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
        }
    }
}

/// What happened over the attempts of one call.
#[derive(Debug, Default, Clone)]
pub struct Attempts {
    pub tries: u32,
    /// The errors of the failed tries, in order.
    pub errors: Vec<String>,
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1-based): a uniform draw from
    /// `[0, min(cap, base·2^(attempt-1))]`, but at least what the server's Retry-After asked.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << (attempt - 1).min(20)).min(self.cap);
        let d = exp.mul_f64(jitter.clamp(0.0, 1.0));
        match retry_after {
            Some(r) => d.max(r.min(self.cap * 4)),
            None => d,
        }
    }

    /// Run `f` until it succeeds, fails with a non-retryable error, or the attempts run out.
    pub fn run<T>(
        &self,
        seed: u64,
        mut f: impl FnMut() -> Result<T, BackendError>,
    ) -> (Result<T, BackendError>, Attempts) {
        let mut attempts = Attempts::default();
        let mut rng = seed | 1;
        loop {
            attempts.tries += 1;
            match f() {
                Ok(v) => return (Ok(v), attempts),
                Err(e) => {
                    attempts.errors.push(e.to_string());
                    if !e.retryable() || attempts.tries >= self.max_attempts {
                        return (Err(e), attempts);
                    }
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let jitter = (rng >> 11) as f64 / (1u64 << 53) as f64;
                    std::thread::sleep(self.delay(attempts.tries, e.retry_after(), jitter));
                }
            }
        }
    }
}

/// `Retry-After`: delta-seconds, or an HTTP date (RFC 7231 IMF-fixdate).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s >= 0.0 && s.is_finite()).then(|| Duration::from_secs_f64(s));
    }
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| *m == parts[2])? as i64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4].split(':').filter_map(|x| x.parse().ok()).collect();
    if hms.len() != 3 {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let at = days * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(Duration::from_secs((at - now).max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        };
        assert_eq!(p.delay(1, None, 1.0), Duration::from_millis(100));
        assert_eq!(p.delay(3, None, 1.0), Duration::from_millis(400));
        assert_eq!(p.delay(9, None, 1.0), Duration::from_secs(2));
        assert_eq!(p.delay(2, None, 0.5), Duration::from_millis(100));
        assert_eq!(p.delay(1, Some(Duration::from_secs(3)), 0.1), Duration::from_secs(3));
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
