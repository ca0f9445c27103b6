//! R1's quality filters on chains of thought.

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Script {
    Latin,
    Cjk,
    Hangul,
    Cyrillic,
    Arabic,
    Hebrew,
    Devanagari,
    Thai,
}

fn script(c: char) -> Option<Script> {
    let u = c as u32;
    Some(match u {
        0x41..=0x5A | 0x61..=0x7A | 0xC0..=0x24F => Script::Latin,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF => Script::Cjk,
        0xAC00..=0xD7AF | 0x1100..=0x11FF | 0x3130..=0x318F => Script::Hangul,
        0x400..=0x4FF => Script::Cyrillic,
        0x600..=0x6FF | 0x750..=0x77F => Script::Arabic,
        0x590..=0x5FF => Script::Hebrew,
        0x900..=0x97F => Script::Devanagari,
        0xE00..=0xE7F => Script::Thai,
        _ => return None,
    })
}

/// Share of script letters that are not in the text's dominant script (0 for one script).
pub fn script_mix(text: &str) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let mut total = 0usize;
    for s in text.chars().filter_map(script) {
        *counts.entry(s).or_insert(0usize) += 1;
        total += 1;
    }
    let top = counts.values().copied().max().unwrap_or(0);
    if total == 0 { 0.0 } else { (total - top) as f64 / total as f64 }
}

/// Length in characters of the longest paragraph (blank-line separated).
pub fn longest_paragraph(text: &str) -> usize {
    text.split("\n\n").map(|p| p.trim().chars().count()).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_mix_ignores_math_and_counts_foreign_letters() {
        assert_eq!(script_mix("Let x = 3, so α + β = π and 2x = 6."), 0.0);
        assert!(script_mix("So the answer is 4. 所以答案是四。") > 0.2);
        assert_eq!(longest_paragraph("ab\n\nabcd\n\nabc"), 4);
    }
}
