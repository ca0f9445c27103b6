//! Secrets never reach what distill writes or prints. One function, [`redact`], is applied to the
//! report, the traces' metadata, the corpus manifest's provenance, export provenance and the
//! error messages the binary prints:
//! - the value of every API key distill has read (registered with [`register_secret`] when a
//!   client reads it from its environment variable) is replaced by `***`, wherever it appears —
//!   an endpoint that echoes the `Authorization` header in an error body included;
//! - the userinfo of a URL (`http://user:KEY@host`) becomes `***@`.

use std::sync::Mutex;

static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remember a secret so that [`redact`] hides it from now on. Values under 4 characters are not
/// registered: hiding them would mangle ordinary text.
pub fn register_secret(value: &str) {
    if value.len() >= 4 {
        let mut s = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
        if !s.iter().any(|x| x == value) {
            s.push(value.to_string());
        }
    }
}

/// `text` with every registered secret and every URL's userinfo replaced by `***`.
pub fn redact(text: &str) -> String {
    let mut out = strip_userinfo(text);
    for s in SECRETS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// Every string inside a JSON value, redacted.
pub fn redact_json(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            let r = redact(s);
            if r != *s {
                *s = r;
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact_json),
        serde_json::Value::Object(o) => o.values_mut().for_each(redact_json),
        _ => {}
    }
}

/// `scheme://user:pass@host…` → `scheme://***@host…`, for every URL in `text`.
fn strip_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first '/', '?', '#', whitespace or quote.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_userinfo_are_hidden_and_other_text_is_kept() {
        register_secret("sk-test-0123456789");
        let t = "HTTP 500 from http://alice:hunter2@host:8000/v1: echo Authorization: Bearer sk-test-0123456789";
        let r = redact(t);
        assert_eq!(r, "HTTP 500 from http://***@host:8000/v1: echo Authorization: Bearer ***");
        assert_eq!(
            redact("http://host/v1 and https://x.org/a@b"),
            "http://host/v1 and https://x.org/a@b"
        );
        let mut v = serde_json::json!({"a": ["https://u:p@h/x", 3], "b": "sk-test-0123456789"});
        redact_json(&mut v);
        assert_eq!(v, serde_json::json!({"a": ["https://***@h/x", 3], "b": "***"}));
    }
}
