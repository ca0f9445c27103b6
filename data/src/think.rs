//! Splitting a completion into reasoning and answer.
//!
//! R1-style models write `<think>\n…\n</think>\n\n answer`. Servers either return the reasoning
//! apart (`reasoning_content`) or inline; R1-Distill chat templates prefill `<think>\n`, so the
//! completion may start inside the block with only the closing tag present.

/// How the reasoning block ended, which verifiers use for the format check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkBlock {
    /// No `<think>` block at all.
    Absent,
    /// A block that was opened (or prefilled) and closed.
    Closed,
    /// `<think>` opened but never closed (truncated or malformed).
    Unclosed,
}

/// Split `text` into `(reasoning, answer, block)`. Tags are removed and the parts trimmed.
pub fn split_think(text: &str) -> (String, String, ThinkBlock) {
    const OPEN: &str = "<think>";
    const CLOSE: &str = "</think>";
    let t = text.trim_start();
    match (t.find(OPEN), t.find(CLOSE)) {
        (Some(o), Some(c)) if o < c => {
            let reasoning = &t[o + OPEN.len()..c];
            let answer = &t[c + CLOSE.len()..];
            (reasoning.trim().to_string(), answer.trim().to_string(), ThinkBlock::Closed)
        }
        // Prefilled `<think>`: the completion holds only the closing tag.
        (None, Some(c)) => {
            (t[..c].trim().to_string(), t[c + CLOSE.len()..].trim().to_string(), ThinkBlock::Closed)
        }
        (Some(o), None) => {
            (t[o + OPEN.len()..].trim().to_string(), String::new(), ThinkBlock::Unclosed)
        }
        _ => (String::new(), text.trim().to_string(), ThinkBlock::Absent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_inline_block() {
        let (r, a, b) = split_think("<think>\nstep 1\nstep 2\n</think>\n\nThe answer is 4.");
        assert_eq!(
            (r.as_str(), a.as_str(), b),
            ("step 1\nstep 2", "The answer is 4.", ThinkBlock::Closed)
        );
    }

    #[test]
    fn prefilled_block_has_only_the_closing_tag() {
        let (r, a, b) = split_think("hmm, 2+2\n</think>\n4");
        assert_eq!((r.as_str(), a.as_str(), b), ("hmm, 2+2", "4", ThinkBlock::Closed));
    }

    #[test]
    fn unclosed_and_absent() {
        assert_eq!(split_think("<think>still going").2, ThinkBlock::Unclosed);
        let (r, a, b) = split_think("just an answer");
        assert_eq!((r.as_str(), a.as_str(), b), ("", "just an answer", ThinkBlock::Absent));
    }
}
