//! Pictures of embedding statistics (PNG and SVG, with plotters) and the markdown report that
//! ties them together.
use std::path::Path;

use plotters::prelude::*;

use super::stats::{Details, EmbeddingStats, StateSummary};
use crate::error::{Error, Result};
use crate::plot::{draw_both, legend_and_present, Area, Drawn, PALETTE};

const RAW: RGBColor = PALETTE[0];
const AFTER: RGBColor = PALETTE[1];

/// Per-dimension std as a histogram (count of dimensions per std bin).
fn std_hist<DB: DrawingBackend>(
    root: &Area<DB>,
    title: &str,
    raw: &[f64],
    after: Option<(&str, &[f64])>,
) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let all_max = raw
        .iter()
        .chain(after.map_or(&[][..], |a| a.1))
        .copied()
        .fold(0.0, f64::max)
        .max(1e-12);
    let bins = 40usize;
    let width = all_max / bins as f64;
    let count = |v: &[f64]| {
        let mut c = vec![0u32; bins];
        for &x in v {
            c[((x / width) as usize).min(bins - 1)] += 1;
        }
        c
    };
    let (cr, ca) = (count(raw), after.map(|a| count(a.1)));
    let ymax = cr
        .iter()
        .chain(ca.iter().flatten())
        .copied()
        .max()
        .unwrap_or(1) as f64
        * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..all_max, 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc("standard deviation of the dimension")
        .y_desc("number of dimensions")
        .draw()?;
    let bars = |c: &[u32], color: RGBColor| {
        c.iter()
            .enumerate()
            .map(move |(i, &n)| {
                Rectangle::new(
                    [(i as f64 * width, 0.0), ((i + 1) as f64 * width, n as f64)],
                    color.mix(0.55).filled(),
                )
            })
            .collect::<Vec<_>>()
    };
    chart
        .draw_series(bars(&cr, RAW))?
        .label("raw")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], RAW.filled()));
    if let (Some(c), Some((name, _))) = (&ca, after) {
        chart
            .draw_series(bars(c, AFTER))?
            .label(name.to_string())
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], AFTER.filled()));
    }
    legend_and_present(&mut chart, root)
}

/// Values sorted in decreasing order against their rank, log-scaled y.
fn sorted_curve<DB: DrawingBackend>(
    root: &Area<DB>,
    title: &str,
    y_desc: &str,
    raw: &[f64],
    after: Option<(&str, &[f64])>,
) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let sort = |v: &[f64]| {
        let mut s: Vec<f64> = v.iter().map(|x| x.abs().max(1e-12)).collect();
        s.sort_by(|a, b| b.total_cmp(a));
        s
    };
    let (sr, sa) = (sort(raw), after.map(|a| sort(a.1)));
    let vals = sr.iter().chain(sa.iter().flatten());
    let lo = vals
        .clone()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .max(1e-12);
    let hi = vals.copied().fold(0.0, f64::max).max(lo * 10.0);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0..sr.len(), (lo * 0.8..hi * 1.25).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("rank (largest first)")
        .y_desc(y_desc)
        .y_label_formatter(&|v| log_tick(*v))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            sr.iter().enumerate().map(|(i, &v)| (i, v)),
            RAW.stroke_width(2),
        ))?
        .label("raw")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RAW.stroke_width(2)));
    if let (Some(s), Some((name, _))) = (&sa, after) {
        chart
            .draw_series(LineSeries::new(
                s.iter().enumerate().map(|(i, &v)| (i, v)),
                AFTER.stroke_width(2),
            ))?
            .label(name.to_string())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], AFTER.stroke_width(2)));
    }
    legend_and_present(&mut chart, root)
}

/// Correlation matrix heat map, dimensions ordered by their first-principal-component loading so
/// that correlated groups form blocks. Blue -1, white 0, red +1. At most `cells` x `cells`
/// rectangles are drawn, each the mean correlation of its block of dimensions: a full 384x384
/// SVG has 147k rectangles (12 MB), so the SVG gets block means and the PNG every entry.
fn corr_heatmap<DB: DrawingBackend>(
    root: &Area<DB>,
    title: &str,
    det: &Details,
    cells: usize,
) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let d = det.std.len();
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| det.pc1[a].total_cmp(&det.pc1[b]));
    let block = d.div_ceil(cells.max(1)).max(1);
    let title = if block > 1 {
        format!("{title}, {block}x{block} block means")
    } else {
        title.to_string()
    };
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0..d, 0..d)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("dimension (ordered by PC1 loading)")
        .y_desc("dimension")
        .draw()?;
    let color = |c: f64| {
        let c = c.clamp(-1.0, 1.0);
        let (r, g, b) = if c >= 0.0 {
            (255.0, 255.0 * (1.0 - c), 255.0 * (1.0 - c))
        } else {
            (255.0 * (1.0 + c), 255.0 * (1.0 + c), 255.0)
        };
        RGBColor(r as u8, g as u8, b as u8)
    };
    let span = |i: usize| i * block..((i + 1) * block).min(d);
    let mean = |bi: usize, bj: usize| {
        let (mut sum, mut n) = (0.0, 0usize);
        for i in span(bi) {
            for j in span(bj) {
                sum += det.corr[order[i] * d + order[j]];
                n += 1;
            }
        }
        sum / n.max(1) as f64
    };
    let n = d.div_ceil(block);
    chart.draw_series((0..n).flat_map(|bi| {
        (0..n).map(move |bj| {
            let (x, y) = (span(bi), span(bj));
            Rectangle::new(
                [(x.start, y.start), (x.end, y.end)],
                color(mean(bi, bj)).filled(),
            )
        })
    }))?;
    root.present()
}

/// Cells per axis of the SVG heat map (see [`corr_heatmap`]).
const SVG_HEATMAP_CELLS: usize = 96;

/// Draws a correlation heat map as `STEM.png` (every entry) and `STEM.svg` (block means).
fn heatmap_files(dir: &Path, stem: &str, title: &str, det: &Details) -> Result<()> {
    let png = dir.join(format!("{stem}.png"));
    {
        let a = BitMapBackend::new(&png, (720, 720)).into_drawing_area();
        corr_heatmap(&a, title, det, usize::MAX)
            .map_err(|e| Error::Invalid(format!("{}: {e}", png.display())))?;
    }
    let svg = dir.join(format!("{stem}.svg"));
    let a = SVGBackend::new(&svg, (720, 720)).into_drawing_area();
    corr_heatmap(&a, title, det, SVG_HEATMAP_CELLS)
        .map_err(|e| Error::Invalid(format!("{}: {e}", svg.display())))?;
    Ok(())
}

/// Writes the pictures of one vector source (`hidden` or `pooler`), with the normalized
/// statistics overlaid when given.
pub fn write_all(
    dir: &Path,
    source: &str,
    raw: &Details,
    after: Option<(&str, &Details)>,
) -> Result<()> {
    let what = if source == "pooler" {
        "pooler output"
    } else {
        "last-layer [CLS]"
    };
    let stds = after.map(|(n, d)| (n, d.std.as_slice()));
    let t = format!("Per-dimension std, {what}");
    draw_both!(dir, format!("{source}_std_hist"), (800, 500), |a| std_hist(
        &a, &t, &raw.std, stds
    ));
    let means = after.map(|(n, d)| (n, d.mean.as_slice()));
    let t = format!("|mean| per dimension, sorted, {what}");
    draw_both!(dir, format!("{source}_mean_sorted"), (800, 500), |a| {
        sorted_curve(&a, &t, "|mean| (log scale)", &raw.mean, means)
    });
    let total = |d: &Details| {
        d.eigenvalues
            .iter()
            .map(|v| v.max(0.0))
            .sum::<f64>()
            .max(1e-300)
    };
    let frac = |d: &Details| {
        d.eigenvalues
            .iter()
            .map(|v| v.max(0.0) / total(d))
            .collect::<Vec<f64>>()
    };
    let (fr, fa) = (frac(raw), after.map(|(n, d)| (n, frac(d))));
    let fa_ref = fa.as_ref().map(|(n, v)| (*n, v.as_slice()));
    let t = format!("Explained variance per principal component, {what}");
    draw_both!(dir, format!("{source}_spectrum"), (800, 500), |a| {
        sorted_curve(&a, &t, "fraction of variance (log scale)", &fr, fa_ref)
    });
    let t = format!("Correlation between dimensions, {what} (blue -1, white 0, red +1)");
    heatmap_files(dir, &format!("{source}_corr"), &t, raw)?;
    if let Some((name, d)) = after {
        let t = format!("Correlation after {name}, {what} (blue -1, white 0, red +1)");
        heatmap_files(dir, &format!("{source}_corr_{name}"), &t, d)?;
    }
    Ok(())
}

fn row(name: &str, s: &EmbeddingStats) -> String {
    format!(
        "| {name} | {:.3} | {:.2} | {:.3} / {:.3} / {:.3} ({:.1}x) | {:.1}% | {:.1}% | {:.1} of {} | {:.3} | {:.1}% | {:.1}% | {:.2e} | {:.3} |\n",
        s.centring_ratio,
        s.mean_norm,
        s.dim_std.min,
        s.dim_std.median,
        s.dim_std.max,
        s.dim_std.max_over_median,
        100.0 * s.second_moment_top1,
        100.0 * s.second_moment_top10,
        s.effective_dim,
        s.d,
        s.mean_abs_corr,
        100.0 * s.pc1_explained,
        100.0 * s.pc5_explained,
        s.isotropy,
        s.mean_pairwise_cosine
    )
}

/// The header of the statistics table used in reports.
pub const TABLE_HEADER: &str = "| vectors | ‖mean‖/mean‖h‖ | ‖mean‖ | std min / median / max (max/median) | top-1 dim share of E[h²] | top-10 share | effective dim | mean \\|corr\\| | PC1 variance | PC1-5 variance | isotropy | mean cosine |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";

/// One table row for a statistics set.
pub fn table_row(name: &str, s: &EmbeddingStats) -> String {
    row(name, s)
}

/// `analysis.md`: the numbers, the pictures and what they say.
pub fn markdown(
    task: &str,
    split: &str,
    model: &str,
    n: usize,
    secs: f64,
    norm: &str,
    sections: &[(String, EmbeddingStats, Option<EmbeddingStats>)],
) -> String {
    let mut md = format!("# [CLS] embedding analysis: {task} ({split}, {n} examples)\n\nModel `{model}`; embedding took {secs:.1} s.\n\n");
    md.push_str(TABLE_HEADER);
    for (name, raw, after) in sections {
        md.push_str(&row(name, raw));
        if let Some(a) = after {
            md.push_str(&row(&format!("{name} + {norm}"), a));
        }
    }
    md.push_str("\nDefinitions: centring ratio ‖E[h]‖ / E[‖h‖] (0 when centred); shares of the total second moment Σ_j E[h_j²]; effective dimension (Σ var)² / Σ var²; isotropy min_c Z(c) / max_c Z(c) with Z(c) = Σ_i exp(cᵀh_i) over the eigenvectors of HᵀH (Mu & Viswanath, ICLR 2018); mean cosine over pairs of a seeded random subset.\n");
    for (name, raw, _) in sections {
        md.push_str(&format!(
            "\n## {name}\n\nThe mean vector has norm {:.2} against an average vector norm of {:.2} (ratio {:.2}); the largest |mean| is {:.3} in dimension {}. The top dimension holds {:.1}% of the second moment and the top 10 hold {:.1}%. Standard deviations range from {:.3} to {:.3} (max/median {:.1}). The first principal component explains {:.1}% of the variance; mean |correlation| between dimensions is {:.3}.\n\n![std]({name}_std_hist.png) ![mean]({name}_mean_sorted.png)\n\n![spectrum]({name}_spectrum.png) ![corr]({name}_corr.png)\n",
            raw.mean_norm,
            raw.avg_norm,
            raw.centring_ratio,
            raw.top_abs_mean.first().map_or(0.0, |d| d.value),
            raw.top_abs_mean.first().map_or(0, |d| d.dim),
            100.0 * raw.second_moment_top1,
            100.0 * raw.second_moment_top10,
            raw.dim_std.min,
            raw.dim_std.max,
            raw.dim_std.max_over_median,
            100.0 * raw.pc1_explained,
            raw.mean_abs_corr
        ));
    }
    md
}

/// A log-axis tick without binary noise (`0.30000000000000004` -> `0.3`).
fn log_tick(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if (1e-3..1e4).contains(&v.abs()) {
        format!("{}", (v * 1e6).round() / 1e6)
    } else {
        format!("{v:.0e}")
    }
}

/// One traced run for [`grad_curves`]: a label and (step, value) points.
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

fn curves_chart<DB: DrawingBackend>(
    root: &Area<DB>,
    title: &str,
    y_desc: &str,
    curves: &[Curve],
) -> Drawn<DB> {
    root.fill(&WHITE)?;
    let pts = curves.iter().flat_map(|c| c.points.iter());
    let xmax = pts.clone().map(|p| p.0).fold(1.0, f64::max);
    let lo = pts
        .clone()
        .map(|p| p.1)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let lo = if lo.is_finite() { lo } else { 1e-6 };
    let hi = pts.map(|p| p.1).fold(lo * 10.0, f64::max);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..xmax, (lo * 0.8..hi * 1.25).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("update")
        .y_desc(y_desc)
        .y_label_formatter(&|v| log_tick(*v))
        .draw()?;
    for (i, c) in curves.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                c.points.iter().copied().filter(|p| p.1 > 0.0),
                color.stroke_width(1),
            ))?
            .label(c.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    legend_and_present(&mut chart, root)
}

/// Writes `STEM.png` and `STEM.svg`: the curves over updates, log-scaled y.
pub fn grad_curves(
    dir: &Path,
    stem: &str,
    title: &str,
    y_desc: &str,
    curves: &[Curve],
) -> Result<()> {
    draw_both!(dir, stem.to_string(), (900, 520), |a| curves_chart(
        &a, title, y_desc, curves
    ));
    Ok(())
}

/// The `analysis.md` section on a trained normalizer's saved state (empty when there is none).
pub fn state_markdown(norm: &str, state: &[StateSummary]) -> String {
    if state.is_empty() {
        return String::new();
    }
    let mut md = format!("\n## Saved state of the normalizer ({norm})\n\nThe tensors the checkpoint holds for its normalizer: entries of a vector (or the diagonal of a square matrix) as min / median / max, and a square matrix's spectrum (trace, share of the largest eigenvalue, smallest eigenvalue).\n\n| tensor | shape | norm | entries min / median / max | trace | top eigenvalue share | min eigenvalue |\n|---|---|---|---|---|---|---|\n");
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or_else(|| "".to_string(), f);
    for s in state {
        let entries = match (&s.entries, s.value) {
            (Some(e), _) => format!("{:.4} / {:.4} / {:.4}", e.min, e.median, e.max),
            (None, Some(v)) => format!("{v}"),
            _ => String::new(),
        };
        md.push_str(&format!(
            "| `{}` | {:?} | {:.4} | {entries} | {} | {} | {} |\n",
            s.name,
            s.shape,
            s.norm,
            opt(s.trace, &|v| format!("{v:.4}")),
            opt(s.top_eigen_share, &|v| format!("{:.1}%", 100.0 * v)),
            opt(s.min_eigen, &|v| format!("{v:.3e}")),
        ));
    }
    md
}
