//! Curves of a sweep, one picture per task and quantity: each normalizer's mean over seeds as a
//! line, and the band from the lowest to the highest seed.
use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use super::RunResult;
use crate::error::Result;
use crate::plot::{draw_both, legend_and_present, Area, Drawn, PALETTE};

/// One normalizer's curve: (x, mean, min, max) over seeds.
pub struct Band {
    pub label: String,
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// Mean, min and max over the runs at each x that every run reached, so that a band never
/// mixes different numbers of seeds.
pub fn band(label: &str, series: &[Vec<(f64, f64)>]) -> Option<Band> {
    let series: Vec<&Vec<(f64, f64)>> = series.iter().filter(|s| !s.is_empty()).collect();
    if series.is_empty() {
        return None;
    }
    let mut at: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for s in &series {
        for &(x, y) in s.iter() {
            at.entry(x.to_bits()).or_default().push(y);
        }
    }
    let mut points: Vec<(f64, f64, f64, f64)> = at
        .into_iter()
        .filter(|(_, ys)| ys.len() == series.len())
        .map(|(x, ys)| {
            let mean = ys.iter().sum::<f64>() / ys.len() as f64;
            let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (f64::from_bits(x), mean, lo, hi)
        })
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    (!points.is_empty()).then(|| Band {
        label: format!("{label} (n={})", series.len()),
        points,
    })
}

fn bands_chart<DB: DrawingBackend>(
    root: &Area<DB>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    bands: &[Band],
) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let pts = bands.iter().flat_map(|b| b.points.iter());
    let x0 = pts.clone().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x1 = pts.clone().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let y0 = pts.clone().map(|p| p.2).fold(f64::INFINITY, f64::min);
    let y1 = pts.map(|p| p.3).fold(f64::NEG_INFINITY, f64::max);
    let (x1, y1) = (x1.max(x0 + 1e-9), y1.max(y0 + 1e-9));
    let pad = 0.05 * (y1 - y0);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))?;
    // Both x axes count whole things (epochs, updates): ticks at whole numbers only.
    let x_ticks = ((x1 - x0).round() as usize + 1).clamp(2, 10);
    chart
        .configure_mesh()
        .x_labels(x_ticks)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()?;
    for (i, b) in bands.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        if b.points.len() > 1 {
            let outline: Vec<(f64, f64)> = b
                .points
                .iter()
                .map(|p| (p.0, p.3))
                .chain(b.points.iter().rev().map(|p| (p.0, p.2)))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(
                outline,
                color.mix(0.18).filled(),
            )))?;
        }
        chart
            .draw_series(LineSeries::new(
                b.points.iter().map(|p| (p.0, p.1)),
                color.stroke_width(2),
            ))?
            .label(b.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
        if b.points.len() <= 20 {
            chart.draw_series(
                b.points
                    .iter()
                    .map(|p| Circle::new((p.0, p.1), 3, color.filled())),
            )?;
        }
    }
    legend_and_present(&mut chart, root)
}

/// Draws `STEM.png`/`.svg` when there is anything to draw; returns whether it did.
fn draw(dir: &Path, stem: &str, title: &str, x: &str, y: &str, bands: &[Band]) -> Result<bool> {
    if bands.is_empty() {
        return Ok(false);
    }
    draw_both!(dir, stem, (900, 520), |a| bands_chart(
        &a, title, x, y, bands
    ));
    Ok(true)
}

/// Per task: dev metric per epoch, training loss per update, and (when traced) the [CLS]
/// gradient norm per update. Returns the PNG names per task.
pub fn write_curves(dir: &Path, runs: &[RunResult]) -> Result<Vec<(String, Vec<String>)>> {
    let mut tasks: Vec<&str> = Vec::new();
    for r in runs {
        if !tasks.contains(&r.task.as_str()) {
            tasks.push(&r.task);
        }
    }
    let mut out = Vec::new();
    for task in tasks {
        let mut variants: Vec<&str> = Vec::new();
        for r in runs.iter().filter(|r| r.task == task) {
            if !variants.contains(&r.variant.as_str()) {
                variants.push(&r.variant);
            }
        }
        let collect = |f: &dyn Fn(&RunResult) -> Vec<(f64, f64)>| -> Vec<Band> {
            variants
                .iter()
                .filter_map(|v| {
                    let series: Vec<Vec<(f64, f64)>> = runs
                        .iter()
                        // Finished runs only: a run in progress would cut the band short.
                        .filter(|r| r.task == task && r.variant == *v)
                        .filter(|r| r.status == crate::sweep::RunStatus::Done)
                        .map(f)
                        .collect();
                    band(v, &series)
                })
                .collect()
        };
        let stem = crate::sweep::sanitize(task);
        let mut pics = Vec::new();
        let dev = collect(&|r| {
            r.epochs
                .iter()
                .enumerate()
                .map(|(i, v)| ((i + 1) as f64, *v))
                .collect()
        });
        let metric = runs
            .iter()
            .find_map(|r| (r.task == task).then(|| r.metric.clone()).flatten())
            .unwrap_or_else(|| "primary metric".into());
        let title = format!("{task}: dev {metric} per epoch (mean over seeds, band min-max)");
        if draw(
            dir,
            &format!("{stem}_dev"),
            &title,
            "epoch",
            &format!("dev {metric} x100"),
            &dev,
        )? {
            pics.push(format!("{stem}_dev.png"));
        }
        let loss = collect(&|r| r.loss.iter().map(|&(s, l)| (s as f64, l)).collect());
        let title =
            format!("{task}: training loss (mean of 10 updates; mean over seeds, band min-max)");
        if draw(
            dir,
            &format!("{stem}_loss"),
            &title,
            "update",
            "training loss",
            &loss,
        )? {
            pics.push(format!("{stem}_loss.png"));
        }
        let grads = collect(&|r| {
            r.cls_grad
                .iter()
                .filter(|p| p.1 > 0.0)
                .map(|&(s, g)| (s as f64, g.log10()))
                .collect()
        });
        let title =
            format!("{task}: gradient norm at the [CLS] vector (mean over seeds, band min-max)");
        if draw(
            dir,
            &format!("{stem}_cls_grad"),
            &title,
            "update",
            "log10 ||dL/d[CLS]||",
            &grads,
        )? {
            pics.push(format!("{stem}_cls_grad.png"));
        }
        for (stem_end, what, pick) in [
            (
                "geometry",
                "share of variance on PC1",
                (|g: &crate::rundir::records::ClsGeometry| g.raw.pc1_share)
                    as fn(&crate::rundir::records::ClsGeometry) -> f64,
            ),
            ("centring", "centring ratio ||E h|| / E ||h||", |g| {
                g.raw.centring_ratio
            }),
        ] {
            let series = collect(&|r| {
                r.geometry
                    .iter()
                    .enumerate()
                    .map(|(i, g)| ((i + 1) as f64, pick(g)))
                    .collect()
            });
            let title = format!("{task}: raw dev [CLS], {what} (mean over seeds, band min-max)");
            if draw(
                dir,
                &format!("{stem}_{stem_end}"),
                &title,
                "epoch",
                what,
                &series,
            )? {
                pics.push(format!("{stem}_{stem_end}.png"));
            }
        }
        out.push((task.to_string(), pics));
    }
    Ok(out)
}

/// One interval of the overview figure: a label, the mean paired difference and its interval.
pub struct Interval {
    pub label: String,
    /// Index of the colour (one per normalizer variant).
    pub color: usize,
    pub mean: f64,
    pub ci: Option<[f64; 2]>,
}

fn forest_chart<DB: DrawingBackend>(root: &Area<DB>, title: &str, rows: &[Interval]) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let xs = rows
        .iter()
        .flat_map(|r| [r.mean].into_iter().chain(r.ci.into_iter().flatten()))
        .chain([0.0]);
    let x0 = xs.clone().fold(f64::INFINITY, f64::min);
    let x1 = xs.fold(f64::NEG_INFINITY, f64::max);
    let pad = 0.08 * (x1 - x0).max(1e-6);
    let n = rows.len() as f64;
    let labels: Vec<String> = rows.iter().map(|r| r.label.clone()).collect();
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(260)
        .build_cartesian_2d((x0 - pad)..(x1 + pad), -0.5..(n - 0.5))?;
    chart
        .configure_mesh()
        .y_labels(rows.len().max(1))
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("paired difference to none, x100 (mean, 95% t-interval)")
        .draw()?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, -0.5), (0.0, n - 0.5)],
        BLACK.stroke_width(1),
    )))?;
    for (i, r) in rows.iter().enumerate() {
        let y = i as f64;
        let color = PALETTE[r.color % PALETTE.len()];
        if let Some([lo, hi]) = r.ci {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(lo, y), (hi, y)],
                color.stroke_width(2),
            )))?;
        }
        chart.draw_series(std::iter::once(Circle::new((r.mean, y), 4, color.filled())))?;
    }
    root.present()
}

/// `vs_none.png`/`.svg`: every task x normalizer's paired difference to `none` with its
/// interval, the figure to look at first. Returns its PNG name when there was anything to draw.
pub fn write_overview(dir: &Path, rows: &[Interval]) -> Result<Option<String>> {
    if rows.is_empty() {
        return Ok(None);
    }
    let height = (120 + 28 * rows.len()).min(4000) as u32;
    draw_both!(dir, "vs_none", (1000, height), |a| forest_chart(
        &a,
        "Paired difference to none per task and normalizer",
        rows
    ));
    Ok(Some("vs_none.png".into()))
}
