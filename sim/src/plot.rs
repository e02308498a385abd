//! `--plot FILE.svg`: token hit rate and p99 TTFT per policy, side by side, for people who
//! would rather look than read.

use crate::report::Row;
use plotters::prelude::*;

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    rows: &[Row],
    value: impl Fn(&Row) -> f64,
    unit: &str,
) -> Result<(), String> {
    let max = rows.iter().map(&value).fold(0.0, f64::max).max(1e-9) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        // A segmented range includes its end: n policies are segments 0..=n-1.
        .build_cartesian_2d((0..rows.len().saturating_sub(1)).into_segmented(), 0.0..max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(rows.len())
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => rows.get(*i).map_or(String::new(), |r| r.policy.clone()),
            _ => String::new(),
        })
        .x_label_style(("sans-serif", 10))
        .y_desc(unit)
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), value(r)),
                ],
                Palette99::pick(i).filled(),
            );
            bar.set_margin(0, 0, 6, 6);
            bar
        }))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Draws the two panels into the SVG file at `path`.
pub fn draw(path: &std::path::Path, rows: &[Row]) -> Result<(), String> {
    let root = SVGBackend::new(path, (1400, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(700);
    panel(
        &left,
        "token cache hit rate",
        rows,
        |r| r.hit_rate * 100.0,
        "%",
    )?;
    panel(
        &right,
        "p99 time to first token",
        rows,
        |r| r.p99_ttft_ms,
        "ms",
    )?;
    root.present()
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
