//! PNG plots for docs/img/, drawn with plotters. Text is rendered with
//! DejaVu Sans (Debian's fonts-dejavu-core, which `cargo xtask bench`
//! installs), loaded from its file, so no font library is linked.
//!
//! Every plot names the run it comes from ([`crate::report::Run`]): in a
//! line under it, and in a `tEXt` chunk (`balancer_tests::plot_run`) that the tests
//! compare with the run its section of docs/benchmarks.md names, so a plot
//! is never left from another run than the table beside it.

use std::{ops::Range, path::Path, sync::Once};

use anyhow::{Context as _, Result, anyhow};
use plotters::{coord::ranged1d::SegmentValue, prelude::*};

use crate::stats::Summary;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Height of the line that names the run, under the plot.
const FOOTER: u32 = 26;

/// One bar: a label and a figure with its spread.
pub struct Bar {
    pub label: String,
    pub value: Summary,
}

/// One line of a line plot.
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = std::fs::read(FONT)
            .with_context(|| {
                format!("cannot read the plots' font {FONT} (package fonts-dejavu-core)")
            })
            .and_then(|bytes| {
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes.leak())
                    .map_err(|_| anyhow!("{FONT} is not a usable font"))
            });
    });
    result
}

/// Draws a plot of `size` (the run's line added under it) with `draw`,
/// then writes it to `path` as a PNG that names the run.
fn plot(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    register_font()?;
    let run = crate::report::run().label();
    let size = (width, height + FOOTER);
    let mut pixels = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_error)?;
        let (plot, footer) = root.split_vertically(height);
        draw(&plot)?;
        footer
            .draw(&Text::new(
                run.clone(),
                (16, 4),
                ("sans-serif", 14).into_font().color(&RGBColor(90, 90, 90)),
            ))
            .map_err(draw_error)?;
        root.present().map_err(draw_error)?;
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), size.0, size.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    // The plots are committed: small files over fast writes.
    encoder.set_compression(png::Compression::Best);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    encoder.add_text_chunk(balancer_tests::plot_run::RUN_KEY.to_owned(), run)?;
    encoder
        .write_header()
        .and_then(|mut writer| writer.write_image_data(&pixels))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Horizontal bars with min-max whiskers, one per entry, top to bottom.
pub fn bars(path: &Path, title: &str, unit: &str, bars: &[Bar]) -> Result<()> {
    let height = 120 + 44 * bars.len() as u32;
    plot(path, (1000, height), |root| {
        draw_bars(root, title, unit, bars)
    })
}

fn draw_bars(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    bars: &[Bar],
) -> Result<()> {
    let top = bars
        .iter()
        .map(|b| b.value.max)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.2;
    let n = bars.len();
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(220)
        // A segmented range 0..k has k + 1 segments.
        .build_cartesian_2d(0.0..top, (0..n.saturating_sub(1)).into_segmented())
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            // Segment i is drawn from the bottom: the first bar goes on top.
            SegmentValue::CenterOf(i) if *i < n => bars[n - 1 - *i].label.clone(),
            _ => String::new(),
        })
        .x_desc(unit)
        .x_label_formatter(&|v| crate::report::number(*v, if top < 10.0 { 2 } else { 0 }))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(draw_error)?;
    let row = |i: usize| n - 1 - i;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(row(i))),
                    (b.value.median, SegmentValue::Exact(row(i) + 1)),
                ],
                RGBColor(70, 120, 190).filled(),
            );
            bar.set_margin(8, 8, 0, 0);
            bar
        }))
        .map_err(draw_error)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            ErrorBar::new_horizontal(
                SegmentValue::CenterOf(row(i)),
                b.value.min,
                b.value.median,
                b.value.max,
                BLACK.stroke_width(2),
                12,
            )
        }))
        .map_err(draw_error)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, b)| {
            Text::new(
                crate::report::number(b.value.median, if b.value.median < 10.0 { 2 } else { 0 }),
                (b.value.max + top * 0.01, SegmentValue::CenterOf(row(i))),
                ("sans-serif", 14),
            )
        }))
        .map_err(draw_error)?;
    Ok(())
}

/// Lines over a common x axis.
pub fn lines(
    path: &Path,
    title: &str,
    x: (&str, Range<f64>),
    y: (&str, Range<f64>),
    lines: &[Line],
) -> Result<()> {
    plot(path, (1000, 560), |root| {
        draw_lines(root, title, x, y, lines)
    })
}

fn draw_lines(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    (x_desc, x_range): (&str, Range<f64>),
    (y_desc, y_range): (&str, Range<f64>),
    lines: &[Line],
) -> Result<()> {
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(90)
        .build_cartesian_2d(x_range, y_range)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(("sans-serif", 15))
        .x_label_formatter(&|v| crate::report::number(*v, 0))
        .y_label_formatter(&|v| crate::report::number(*v, 0))
        .draw()
        .map_err(draw_error)?;
    for (i, line) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                line.points.iter().copied(),
                color.stroke_width(3),
            ))
            .map_err(draw_error)?
            .label(line.label.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 24, y)], color.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)?;
    Ok(())
}

fn draw_error<E: std::error::Error + Send + Sync + 'static>(err: E) -> anyhow::Error {
    anyhow!("drawing a plot: {err}")
}
