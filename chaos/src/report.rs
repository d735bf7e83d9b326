//! The run's report: a summary table for the terminal, a JSON file for scripts, and a timeline
//! chart (SVG) of request rate, errors, IdP calls, leader changes and faults.

use std::path::Path;

use comfy_table::Table;
use plotters::prelude::*;

use crate::run::Report;

/// The terminal summary.
pub fn table(r: &Report) -> String {
    let mut head = Table::new();
    head.set_header(vec!["run", "value"]);
    let rows: Vec<(&str, String)> = vec![
        ("scenario", format!("{} on {}", r.scenario, r.store)),
        (
            "fleet",
            format!(
                "{} gateways as {}, tokens living {} ms, seed {}",
                r.gateways, r.hosting, r.token_lifetime_ms, r.seed
            ),
        ),
        (
            "load",
            format!(
                "{} requests over {} s at {} req/s; {} failed, {} resent",
                r.requests,
                r.duration_ms / 1000,
                r.rps,
                r.failed,
                r.retried
            ),
        ),
        (
            "latency",
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                r.latency_us[0] as f64 / 1e3,
                r.latency_us[1] as f64 / 1e3,
                r.latency_us[2] as f64 / 1e3
            ),
        ),
        (
            "IdP",
            format!(
                "{} tokens for {} clients",
                r.idp_issued.values().sum::<u64>(),
                r.idp_issued.len()
            ),
        ),
        ("lease", format!("{} hand-overs", r.leader_changes)),
        (
            "faults",
            r.events
                .iter()
                .filter(|e| e.kind == "fault")
                .map(|e| format!("{:.1}s {}", e.at_ms as f64 / 1e3, e.what))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    ];
    for (k, v) in rows {
        head.add_row(vec![k.to_owned(), v]);
    }
    let mut inv = Table::new();
    inv.set_header(vec!["invariant", "", "evidence"]);
    for i in &r.invariants {
        let mark = if i.held { "pass" } else { "FAIL" };
        inv.add_row(vec![i.name.to_owned(), mark.to_owned(), i.detail.clone()]);
    }
    let verdict = if r.passed() {
        "PASSED: every invariant held"
    } else {
        "FAILED: an invariant broke"
    };
    format!("{head}\n{inv}\n{verdict}\n")
}

/// Writes `report.json` and `timeline.svg` into `dir`.
pub fn write(r: &Report, dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(r)?)?;
    chart(r, &dir.join("timeline.svg"))
}

/// Per-second series over the run: requests, failures, IdP tokens.
fn series(r: &Report) -> (Vec<u64>, Vec<u64>, Vec<u64>) {
    let secs = (r.duration_ms / 1000 + 1) as usize;
    let (mut reqs, mut errs, mut idp) = (vec![0; secs], vec![0; secs], vec![0; secs]);
    for o in &r.outcomes {
        let s = ((o.at_ms / 1000) as usize).min(secs - 1);
        reqs[s] += 1;
        if !o.ok() {
            errs[s] += 1;
        }
    }
    let mut last = 0;
    for (at, total) in &r.idp_samples {
        let s = ((at / 1000) as usize).min(secs - 1);
        idp[s] += total.saturating_sub(last);
        last = *total;
    }
    (reqs, errs, idp)
}

fn chart(r: &Report, path: &Path) -> anyhow::Result<()> {
    let (reqs, errs, idp) = series(r);
    let secs = reqs.len() as u32;
    let top = reqs.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.15;
    let root = SVGBackend::new(path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "{} on {}: {}",
        r.scenario,
        r.store,
        if r.passed() { "passed" } else { "FAILED" }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .right_y_label_area_size(48)
        .build_cartesian_2d(0u32..secs, 0f64..top)?
        .set_secondary_coord(
            0u32..secs,
            0f64..(idp.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.3),
        );
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("requests / s")
        .light_line_style(WHITE)
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("IdP tokens / s")
        .draw()?;
    let blue = RGBColor(31, 119, 180);
    chart
        .draw_series(LineSeries::new(
            reqs.iter().enumerate().map(|(s, n)| (s as u32, *n as f64)),
            blue.stroke_width(2),
        ))?
        .label("requests")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], blue.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            errs.iter().enumerate().map(|(s, n)| (s as u32, *n as f64)),
            RED.stroke_width(2),
        ))?
        .label("failed")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2)));
    let green = RGBColor(44, 160, 44);
    chart
        .draw_secondary_series(LineSeries::new(
            idp.iter().enumerate().map(|(s, n)| (s as u32, *n as f64)),
            green.stroke_width(2),
        ))?
        .label("IdP tokens (right axis)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], green.stroke_width(2)));
    // Faults (orange), heals (grey), lease hand-overs (purple), Raft leader changes (brown).
    for e in &r.events {
        let color = match e.kind {
            "fault" => RGBColor(255, 127, 14),
            "heal" => RGBColor(150, 150, 150),
            "leader" => RGBColor(148, 103, 189),
            _ => RGBColor(140, 86, 75),
        };
        let x = (e.at_ms / 1000) as u32;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(x, 0.0), (x, top)],
            color.stroke_width(1),
        )))?;
        if e.kind == "fault" {
            chart.draw_series(std::iter::once(Text::new(
                e.what.clone(),
                (x, top * 0.96),
                ("sans-serif", 12).into_font().color(&color),
            )))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()?;
    root.present()?;
    Ok(())
}
