//! SVG charts of the report and of the attention benchmark (plotters' SVG backend).
//!
//! `vidkv report --plot DIR` writes `pareto.svg` (attention error against effective bits,
//! one point per file and preset) and `layers-<file>.svg` (attention error per stored layer
//! and preset); `vidkv bench attention --plot DIR` writes `attention.svg` (decode time
//! against context length per preset).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::bench::AttentionResult;
use crate::error::{Result, VidkvError};
use crate::report::FileReport;

const SIZE: (u32, u32) = (860, 520);

fn failed(path: &Path, e: impl std::fmt::Display) -> VidkvError {
    VidkvError::Io {
        path: path.display().to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

fn color(i: usize) -> RGBColor {
    const COLORS: [RGBColor; 8] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(127, 127, 127),
    ];
    COLORS[i % COLORS.len()]
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;
type Svg<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| VidkvError::Io {
        path: dir.display().to_string(),
        source,
    })
}

/// Creates the SVG file at `path`, fills it white, lets `draw` draw on it and writes it out.
fn render(path: &Path, draw: impl FnOnce(&Svg<'_>) -> DrawResult) -> Result<PathBuf> {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)
        .map_err(Into::into)
        .and_then(|()| draw(&root))
        .and_then(|()| root.present().map_err(Into::into))
        .map_err(|e| failed(path, e))?;
    Ok(path.to_path_buf())
}

/// A chart with the common caption, margins and label areas over the given axes.
fn chart_on<'a, 'b, X: Ranged, Y: Ranged>(
    root: &'a Svg<'b>,
    caption: &str,
    caption_size: u32,
    x: impl plotters::coord::ranged1d::AsRangedCoord<CoordDescType = X, Value = X::ValueType>,
    y: impl plotters::coord::ranged1d::AsRangedCoord<CoordDescType = Y, Value = Y::ValueType>,
) -> std::result::Result<
    ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>,
    Box<dyn std::error::Error>,
> {
    Ok(ChartBuilder::on(root)
        .caption(caption, ("sans-serif", caption_size))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)?)
}

/// Draws `points` as a line with dots in series colour `i`, labelled in the legend.
fn line_with_dots<X, Y>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<X, Y>>,
    points: Vec<(f64, f64)>,
    i: usize,
    label: &str,
) -> DrawResult
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let c = color(i);
    chart
        .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    Ok(())
}

/// Draws the legend box at `position`.
fn legend<'a, 'b: 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> DrawResult {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// The top of an error axis: 15 % above the largest error (at least 1e-3).
fn error_axis_top(errors: impl Iterator<Item = f64>) -> f64 {
    errors.fold(0.0f64, f64::max).max(1e-3) * 1.15
}

/// Writes the report's charts into `dir`; returns the files written.
pub fn report_charts(reports: &[FileReport], dir: &Path) -> Result<Vec<PathBuf>> {
    create_dir(dir)?;
    let mut written = vec![pareto(reports, &dir.join("pareto.svg"))?];
    for report in reports {
        let name: String = report
            .file
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        written.push(layers(report, &dir.join(format!("layers-{name}.svg")))?);
    }
    Ok(written)
}

fn pareto(reports: &[FileReport], path: &Path) -> Result<PathBuf> {
    let max_err = error_axis_top(
        reports
            .iter()
            .flat_map(|r| r.presets.iter().map(|m| m.attn_rel_err)),
    );
    render(path, |root| {
        let mut chart = chart_on(
            root,
            "Attention error against effective bits (lower left is better)",
            20,
            1.5f64..17f64,
            0f64..max_err,
        )?;
        chart
            .configure_mesh()
            .x_desc("effective bits per element (K and V, metadata and exact tokens included)")
            .y_desc("attention relative error")
            .draw()?;
        for (i, report) in reports.iter().enumerate() {
            let c = color(i);
            chart
                .draw_series(
                    report
                        .presets
                        .iter()
                        .map(|m| Circle::new((m.bits_all, m.attn_rel_err), 5, c.filled())),
                )?
                .label(report.file.clone())
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, c.filled()));
            chart.draw_series(report.presets.iter().map(|m| {
                Text::new(
                    m.preset.clone(),
                    (m.bits_all + 0.15, m.attn_rel_err),
                    ("sans-serif", 13).into_font().color(&c),
                )
            }))?;
        }
        legend(&mut chart, SeriesLabelPosition::MiddleRight)
    })
}

fn layers(report: &FileReport, path: &Path) -> Result<PathBuf> {
    let layers = report
        .presets
        .iter()
        .map(|m| m.attn_rel_err_per_layer.len())
        .max()
        .unwrap_or(1);
    let max_err = error_axis_top(
        report
            .presets
            .iter()
            .flat_map(|m| m.attn_rel_err_per_layer.iter().copied()),
    );
    render(path, |root| {
        let mut chart = chart_on(
            root,
            &format!("Attention error per stored layer: {}", report.file),
            20,
            -0.2f64..(layers as f64 - 0.8),
            0f64..max_err,
        )?;
        chart
            .configure_mesh()
            .x_labels(layers)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc("stored layer (index in the file)")
            .y_desc("attention relative error")
            .draw()?;
        for (i, m) in report.presets.iter().enumerate() {
            let points = m
                .attn_rel_err_per_layer
                .iter()
                .enumerate()
                .map(|(l, &e)| (l as f64, e))
                .collect();
            line_with_dots(&mut chart, points, i, &m.preset)?;
        }
        legend(&mut chart, SeriesLabelPosition::MiddleRight)
    })
}

/// Writes `attention.svg` (median decode time against context per preset) into `dir`.
pub fn attention_chart(results: &[AttentionResult], adapter: &str, dir: &Path) -> Result<PathBuf> {
    create_dir(dir)?;
    let (min_ctx, max_ctx) = results.iter().fold((f64::MAX, 1.0f64), |(lo, hi), r| {
        (lo.min(r.context as f64), hi.max(r.context as f64))
    });
    let (min_ms, max_ms) = results.iter().fold((f64::MAX, 0.0f64), |(lo, hi), r| {
        (lo.min(r.median_ms), hi.max(r.median_ms))
    });
    let mut presets: Vec<&str> = Vec::new();
    for r in results {
        if !presets.contains(&r.preset.as_str()) {
            presets.push(&r.preset);
        }
    }
    render(&dir.join("attention.svg"), |root| {
        let mut chart = chart_on(
            root,
            &format!("Decode attention time, one layer ({adapter})"),
            18,
            (min_ctx * 0.8..max_ctx * 1.25).log_scale(),
            (min_ms * 0.8..max_ms * 1.25).log_scale(),
        )?;
        chart
            .configure_mesh()
            .light_line_style(TRANSPARENT)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.1}"))
            .x_desc("context (tokens)")
            .y_desc("median time per decode step (ms)")
            .draw()?;
        for (i, preset) in presets.iter().enumerate() {
            let points = results
                .iter()
                .filter(|r| r.preset == *preset)
                .map(|r| (r.context as f64, r.median_ms))
                .collect();
            line_with_dots(&mut chart, points, i, preset)?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}
