//! PNG charts with plotters: training curves from metrics.jsonl, and histograms for reports.
//! Text is drawn with an embedded DejaVu Sans, so charts render the same on machines without fonts.

use std::path::Path;
use std::sync::Once;

use anyhow::Context;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");
        let _ = register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// A named series of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
    /// Draw dots instead of a line (sparse series such as eval loss).
    pub dots: bool,
}

/// One chart per panel, stacked vertically.
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

pub fn line_chart(out: &Path, panels: &[Panel], x_label: &str) -> anyhow::Result<()> {
    fonts();
    let height = 320 * panels.len() as u32;
    let root = BitMapBackend::new(out, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    for (area, panel) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
        let pts: Vec<(f64, f64)> = panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(|p| p.1.is_finite())
            .collect();
        if pts.is_empty() {
            continue;
        }
        let (x0, x1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) = pts.iter().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        // A flat series (a constant learning rate) still gets a readable range.
        let pad = ((y1 - y0) * 0.08).max(y1.abs().max(y0.abs()) * 0.05).max(1e-9);
        let mut chart = ChartBuilder::on(area)
            .caption(&panel.title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))?;
        // Learning rates (1e-5…) in scientific notation, whole steps without decimals.
        let small = y0.abs().max(y1.abs()) < 1e-2;
        let y_fmt = move |v: &f64| {
            if small {
                format!("{v:.1e}")
            } else {
                format!("{v:.3}").trim_end_matches('0').trim_end_matches('.').to_string()
            }
        };
        let x_fmt = |v: &f64| {
            if (v - v.round()).abs() < 1e-9 { format!("{v:.0}") } else { format!("{v:.1}") }
        };
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(panel.y_label.as_str())
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .label_style(("sans-serif", 14))
            .draw()?;
        for s in panel.series.iter().filter(|s| !s.points.is_empty()) {
            let color = s.color;
            if s.dots {
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 5, color.filled())))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
            } else {
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present().with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Loss (train and eval), learning rate and gradient norm from a run's metrics.jsonl.
pub fn training_curves(metrics: &Path, out: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let (mut loss, mut eval, mut lr, mut gn) = (vec![], vec![], vec![], vec![]);
    // On-policy runs: the reverse KL of the samples and of held-out samples, EOS and pass rates.
    let (mut rkl, mut eval_rkl, mut eos, mut pass) = (vec![], vec![], vec![], vec![]);
    // GRPO runs: reward, held-out pass@1, clip fraction, KL to the reference, entropy, length.
    let (mut reward, mut eval_pass, mut clip, mut kl) = (vec![], vec![], vec![], vec![]);
    let (mut entropy, mut length, mut dropped) = (vec![], vec![], vec![]);
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l)?;
        let step = v["step"].as_f64().unwrap_or(0.0);
        if let Some(e) = v["eval_loss"].as_f64() {
            eval.push((step, e));
        }
        if let Some(e) = v["eval_reverse_kl"].as_f64() {
            eval_rkl.push((step, e));
        }
        if let Some(x) = v["sample_reverse_kl"].as_f64() {
            rkl.push((step, x));
        }
        if let Some(x) = v["eos_fraction"].as_f64() {
            eos.push((step, x));
        }
        if let Some(x) = v["pass_rate"].as_f64() {
            pass.push((step, x));
        }
        for (key, points) in [
            ("reward_mean", &mut reward),
            ("eval_pass_rate", &mut eval_pass),
            ("clip_fraction", &mut clip),
            ("kl_ref", &mut kl),
            ("entropy", &mut entropy),
            ("sample_tokens", &mut length),
            ("groups_dropped", &mut dropped),
        ] {
            if let Some(x) = v[key].as_f64() {
                points.push((step, x));
            }
        }
        if let Some(x) = v["loss"].as_f64() {
            loss.push((step, x));
            lr.push((step, v["lr"].as_f64().unwrap_or(0.0)));
            gn.push((step, v["grad_norm"].as_f64().unwrap_or(0.0)));
        }
    }
    let on_policy = !rkl.is_empty() || !eval_rkl.is_empty();
    let rl = !reward.is_empty();
    let mut panels = vec![
        Panel {
            title: "Loss".into(),
            y_label: if rl {
                "policy loss"
            } else if on_policy {
                "divergence (nats/token)"
            } else {
                "cross-entropy (nats/token)"
            }
            .into(),
            series: vec![
                Series { name: "train".into(), points: loss, color: BLUE, dots: false },
                Series { name: "held-out eval".into(), points: eval, color: RED, dots: true },
            ],
        },
        Panel {
            title: "Learning rate".into(),
            y_label: "lr".into(),
            series: vec![Series { name: "lr".into(), points: lr, color: GREEN, dots: false }],
        },
        Panel {
            title: "Gradient norm (before clipping)".into(),
            y_label: "global L2 norm".into(),
            series: vec![Series {
                name: "grad norm".into(),
                points: gn,
                color: MAGENTA,
                dots: false,
            }],
        },
    ];
    if on_policy {
        panels.push(Panel {
            title: "Reverse KL to the teacher (the student's samples)".into(),
            y_label: "nats/token".into(),
            series: vec![
                Series { name: "step samples".into(), points: rkl, color: BLUE, dots: false },
                Series {
                    name: "held-out prompts".into(),
                    points: eval_rkl,
                    color: RED,
                    dots: true,
                },
            ],
        });
        panels.push(Panel {
            title: "Samples".into(),
            y_label: "fraction".into(),
            series: vec![
                Series { name: "ending in EOS".into(), points: eos, color: GREEN, dots: false },
                Series {
                    name: "passing the verifier".into(),
                    points: pass.clone(),
                    color: MAGENTA,
                    dots: false,
                },
            ],
        });
    }
    if rl {
        let s =
            |name: &str, points, color| Series { name: name.into(), points, color, dots: false };
        panels.push(Panel {
            title: "Reward and pass rate".into(),
            y_label: "mean".into(),
            series: vec![
                s("reward (rollouts)", reward, BLUE),
                s("pass rate (rollouts)", pass, GREEN),
                Series {
                    name: "held-out pass@1".into(),
                    points: eval_pass,
                    color: RED,
                    dots: true,
                },
            ],
        });
        panels.push(Panel {
            title: "Policy".into(),
            y_label: "per token".into(),
            series: vec![
                s("clip fraction", clip, MAGENTA),
                s("KL to the reference", kl, RED),
                s("entropy (nats)", entropy, BLUE),
            ],
        });
        panels.push(Panel {
            title: "Rollouts".into(),
            y_label: "count".into(),
            series: vec![s("tokens per sample", length, GREEN), s("groups dropped", dropped, RED)],
        });
    }
    line_chart(out, &panels, "optimizer step")
}

/// A bar chart of `(label, count)` buckets.
pub fn bars(
    out: &Path,
    title: &str,
    x_label: &str,
    buckets: &[(String, f64)],
    color: RGBColor,
) -> anyhow::Result<()> {
    fonts();
    let root = BitMapBackend::new(out, (900, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = buckets.len().max(1) as u32;
    let top = buckets.iter().map(|b| b.1).fold(1.0, f64::max);
    let labels: Vec<String> = buckets.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0u32..n).into_segmented(), 0f64..top * 1.1)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("count")
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 13))
        .draw()?;
    chart.draw_series(buckets.iter().enumerate().map(|(i, b)| {
        let i = i as u32;
        Rectangle::new(
            [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), b.1)],
            color.filled(),
        )
    }))?;
    root.present().with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
