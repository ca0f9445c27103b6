//! Progress bars for long work: counts, rate and ETA on stderr (hidden when not a terminal).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` items (`None`: a spinner with a count), with a unit name.
pub fn bar(total: Option<u64>, unit: &str) -> ProgressBar {
    let pb = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let tmpl = match total {
        Some(_) => format!(
            "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
        ),
        None => format!("{{elapsed_precise}} {{spinner}} {{pos}} {unit} ({{per_sec}}) {{msg}}"),
    };
    pb.set_style(
        ProgressStyle::with_template(&tmpl).expect("valid template").progress_chars("=> "),
    );
    pb
}

/// Bytes per second as MB/s.
pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}
