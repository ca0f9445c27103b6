//! Progress for long work: counts, rate and ETA on stderr. In a terminal, a bar; otherwise (a
//! log file, CI, `nohup`) the same line, printed as a plain line at most every
//! `DISTILL_PROGRESS_EVERY_S` seconds (10 by default), and every line a command prints through
//! the bar (an eval loss, a checkpoint) at once.

use std::io::{self, IsTerminal};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// Seconds between progress lines in a log.
const EVERY_ENV: &str = "DISTILL_PROGRESS_EVERY_S";

/// A "terminal" that turns indicatif's redraws into log lines.
#[derive(Debug)]
struct LogLines {
    every: Duration,
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    /// The redraw being written.
    buf: String,
    /// When the last bar line went out, and what it said.
    sent_at: Option<Instant>,
    sent: Option<String>,
    /// The newest bar line held back by the interval.
    held: Option<String>,
}

/// Lines are drawn padded to this width; a run of 100+ spaces separates them.
const WIDTH: u16 = 1000;

impl TermLike for LogLines {
    fn width(&self) -> u16 {
        WIDTH
    }
    fn height(&self) -> u16 {
        100
    }
    fn move_cursor_up(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_down(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_right(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn move_cursor_left(&self, _: usize) -> io::Result<()> {
        Ok(())
    }
    fn write_line(&self, s: &str) -> io::Result<()> {
        self.write_str(s)?;
        self.write_str(&" ".repeat(WIDTH as usize))
    }
    fn write_str(&self, s: &str) -> io::Result<()> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).buf.push_str(s);
        Ok(())
    }
    fn clear_line(&self) -> io::Result<()> {
        Ok(())
    }
    /// One redraw is complete: the lines printed through the bar go out at once, the bar's own
    /// line (the last) when enough time has passed since the previous one.
    fn flush(&self) -> io::Result<()> {
        use std::io::Write;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let text = std::mem::take(&mut st.buf).replace('\r', "");
        let pad = " ".repeat(100);
        let lines: Vec<&str> =
            text.split(pad.as_str()).map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
        let mut err = io::stderr().lock();
        // A redraw with nothing in it is the bar being cleared at the end: the last state that
        // was held back goes out, so a log shows where the work ended.
        let Some((bar, printed)) = lines.split_last() else {
            if let Some(last) = st.held.take()
                && st.sent.as_deref() != Some(last.as_str())
            {
                writeln!(err, "{last}")?;
            }
            return Ok(());
        };
        for l in printed {
            writeln!(err, "{}", l.trim())?;
        }
        // (A little early is on time: the steady tick fires at about `every`.)
        if st.sent_at.is_none_or(|t| t.elapsed() >= self.every.mul_f64(0.9)) {
            writeln!(err, "{}", bar.trim())?;
            st.sent_at = Some(Instant::now());
            st.held = None;
            st.sent = Some(bar.trim().to_string());
        } else {
            st.held = Some(bar.trim().to_string());
        }
        Ok(())
    }
}

/// Where a bar draws: the terminal, or log lines (and their interval) when stderr is not one.
fn target() -> (ProgressDrawTarget, Option<Duration>) {
    if io::stderr().is_terminal() {
        return (ProgressDrawTarget::stderr(), None);
    }
    let every = std::env::var(EVERY_ENV)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .unwrap_or(10.0);
    let every = Duration::from_secs_f64(every);
    let t = ProgressDrawTarget::term_like(Box::new(LogLines {
        every,
        state: Mutex::new(LogState::default()),
    }));
    (t, Some(every.max(Duration::from_millis(100))))
}

/// A bar over `total` items (`None`: a spinner with a count), with a unit name.
pub fn bar(total: Option<u64>, unit: &str) -> ProgressBar {
    let (target, every) = target();
    let pb = ProgressBar::with_draw_target(total, target);

    let tmpl = match total {
        Some(_) => format!(
            "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
        ),
        None => format!("{{elapsed_precise}} {{spinner}} {{pos}} {unit} ({{per_sec}}) {{msg}}"),
    };
    pb.set_style(
        ProgressStyle::with_template(&tmpl).expect("valid template").progress_chars("=> "),
    );
    // In a log, redraw on a clock too, so a stage that finishes nothing for a while still says
    // where it is; and say where it starts.
    if let Some(every) = every {
        pb.tick();
        pb.enable_steady_tick(every);
    }
    pb
}

/// Bytes per second as MB/s.
pub fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}
