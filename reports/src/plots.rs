//! The report's figures as inline SVG, drawn by plotters' SVG backend. Text
//! goes into the SVG as `<text>` and is laid out by the browser, so no font
//! is needed here (plotters' `ttf` feature stays off).

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::ReportError;

const SIZE: (u32, u32) = (640, 320);
/// Most histogram bins.
pub(crate) const BINS_MAX: usize = 200;

fn plot_error(e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot(e.to_string())
}

/// Draws with `draw` onto a fresh white SVG and returns its text.
fn svg(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), ReportError>,
) -> Result<String, ReportError> {
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        draw(&root)?;
        root.present().map_err(plot_error)?;
    }
    Ok(text)
}

/// A non-empty range covering `values`.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        (0.0, 1.0)
    } else if (hi - lo).abs() < f64::EPSILON {
        (lo - 0.5, hi + 0.5)
    } else {
        (lo, hi)
    }
}

/// A histogram of `values` in `bins` equal bins.
pub(crate) fn histogram(
    title: &str,
    x_label: &str,
    values: &[f64],
    bins: usize,
) -> Result<String, ReportError> {
    let bins = bins.clamp(1, BINS_MAX);
    let (lo, hi) = range(values.iter().copied());
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u32; bins];
    for v in values.iter().filter(|v| v.is_finite()) {
        let bin = (((v - lo) / width) as usize).min(bins - 1);
        counts[bin] += 1;
    }
    let top = f64::from(counts.iter().copied().max().unwrap_or(0).max(1)) * 1.1;
    svg(SIZE, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(lo..hi, 0.0..top)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc("runs")
            .draw()
            .map_err(plot_error)?;
        let bars = counts.iter().enumerate().map(|(i, &c)| {
            // A gap of a tenth of a bin keeps neighbouring bars apart.
            let x0 = lo + width * (i as f64 + 0.05);
            Rectangle::new(
                [(x0, 0.0), (x0 + width * 0.9, f64::from(c))],
                BLUE.mix(0.6).filled(),
            )
        });
        chart.draw_series(bars).map_err(plot_error)?;
        Ok(())
    })
}

/// Horizontal bars, one per label.
pub(crate) fn bars(
    title: &str,
    x_label: &str,
    bars: &[(String, f64)],
) -> Result<String, ReportError> {
    let n = bars.len().max(1);
    let (_, hi) = range(bars.iter().map(|(_, v)| *v).chain([0.0]));
    let height = (60 + 22 * n as u32).max(SIZE.1);
    svg((SIZE.0 + 160, height), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(240)
            .build_cartesian_2d(0.0..hi * 1.1, 0.0..n as f64)
            .map_err(plot_error)?;
        let label = |y: &f64| {
            let i = y.floor() as usize;
            bars.get(i).map(|(l, _)| l.clone()).unwrap_or_default()
        };
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_labels(n * 2 + 1)
            .y_label_formatter(&|y| {
                if y.fract() > 0.25 {
                    label(y)
                } else {
                    String::new()
                }
            })
            .disable_y_mesh()
            .draw()
            .map_err(plot_error)?;
        let rects = bars.iter().enumerate().map(|(i, (_, v))| {
            let y = i as f64;
            Rectangle::new([(0.0, y + 0.15), (*v, y + 0.85)], GREEN.mix(0.6).filled())
        });
        chart.draw_series(rects).map_err(plot_error)?;
        Ok(())
    })
}

/// Each series sorted and drawn against its percentile: a quantile plot,
/// which shows a distribution's tail without choosing bins.
pub(crate) fn quantiles(
    title: &str,
    y_label: &str,
    series: &[(&str, Vec<f64>)],
) -> Result<String, ReportError> {
    let (lo, hi) = range(
        series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .chain([0.0]),
    );
    let colors = [BLUE, RED, GREEN, MAGENTA];
    svg(SIZE, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..100.0, lo.min(0.0)..hi * 1.1)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("percentile of runs")
            .y_desc(y_label)
            .draw()
            .map_err(plot_error)?;
        for (i, (name, values)) in series.iter().enumerate() {
            let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
            sorted.sort_by(f64::total_cmp);
            let n = sorted.len().max(2) - 1;
            let color = colors[i % colors.len()];
            let points = sorted
                .iter()
                .enumerate()
                .map(|(k, v)| (100.0 * k as f64 / n as f64, *v));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_error)?
                .label(*name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_svg_even_without_data() {
        for svg in [
            histogram("h", "ms", &[], 10).unwrap(),
            histogram("h", "ms", &[3.0, 3.0, f64::NAN], 10).unwrap(),
            bars("b", "x", &[]).unwrap(),
            quantiles("q", "ns", &[("p50", vec![])]).unwrap(),
        ] {
            assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
            assert!(svg.trim_end().ends_with("</svg>"));
        }
    }

    #[test]
    fn a_histogram_draws_one_bar_per_bin() {
        let svg = histogram("h", "ms", &[1.0, 2.0, 2.5, 9.0], 4).unwrap();
        assert!(svg.matches("<rect").count() >= 4);
        assert!(svg.contains(">\nh\n</text>"), "the caption is SVG text");
    }
}
