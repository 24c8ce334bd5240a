//! Line charts rendered as PNG and SVG, with no system font.
//!
//! A [`Figure`] is a grid of [`Panel`]s, each a set of [`Series`] (lines) and
//! [`Bars`] (filled rectangles, drawn under the lines) on a numeric or
//! categorical x axis. [`render_png`] and [`render_svg`] draw it with
//! plotters; [`save`] writes both files atomically. Text is laid out and, in
//! PNGs, rasterised with DejaVu Sans, which is embedded in the library
//! (`assets/DejaVuSans.ttf`, Bitstream Vera licence, next to it), so plots look
//! the same on every machine and need no font installed. SVGs name the
//! `sans-serif` family and leave drawing the glyphs to the viewer.
//!
//! Points with a non-finite y are gaps: the line breaks there, as for a class
//! without test samples.
//!
//! ```
//! use lt_report::plot::{render_png, render_svg, Figure, Panel, Series};
//!
//! let mut panel = Panel::new("Accuracy", "epoch", "top-1 (%)");
//! panel.series.push(Series::new("joint", [31, 119, 180], vec![(1.0, 20.0), (2.0, 35.0), (3.0, 41.0)]));
//! let fig = Figure::single(panel);
//! let png = render_png(&fig).unwrap();
//! assert_eq!(&png[1..4], b"PNG");
//! assert!(render_svg(&fig).unwrap().contains("<polyline"));
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::ReportError;

/// The embedded font (DejaVu Sans 2.37).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Font family every text of a figure uses; the embedded font is registered
/// under this name.
pub const FONT_FAMILY: &str = "sans-serif";

/// Ten distinguishable colours (the matplotlib "tab10" cycle).
pub const PALETTE: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// Registers the embedded font once per process. plotters keeps fonts in a
/// global table; every later figure finds it there.
fn ensure_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        register_font(FONT_FAMILY, FontStyle::Normal, FONT).is_ok()
            && register_font(FONT_FAMILY, FontStyle::Bold, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Plot(
            "the embedded font assets/DejaVuSans.ttf could not be parsed".into(),
        ))
    }
}

/// One line of a panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Name shown in the legend.
    pub name: String,
    /// `(x, y)` points in drawing order; a non-finite y breaks the line.
    pub points: Vec<(f64, f64)>,
    /// RGB colour.
    pub color: [u8; 3],
    /// Dashed instead of solid.
    pub dashed: bool,
    /// Draw a dot on every point.
    pub markers: bool,
    /// Half-width of a vertical error bar at each point (same length as
    /// `points`; a non-finite or zero value draws none).
    pub error: Option<Vec<f64>>,
}

impl Series {
    /// A solid line without markers or error bars.
    pub fn new(name: impl Into<String>, color: [u8; 3], points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            points,
            color,
            dashed: false,
            markers: false,
            error: None,
        }
    }
}

/// Filled rectangles sharing a colour and a legend entry (e.g. the bins of
/// a reliability diagram). Drawn before, so under, the panel's lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Bars {
    /// Name shown in the legend.
    pub name: String,
    /// RGB colour.
    pub color: [u8; 3],
    /// Fill opacity in `[0, 1]` (the outline is opaque).
    pub opacity: f64,
    /// Each bar as `(x_left, x_right, y_bottom, y_top)`; a bar with a
    /// non-finite coordinate is not drawn.
    pub bars: Vec<(f64, f64, f64, f64)>,
}

impl Bars {
    /// Bars of `color` at 80 % opacity.
    pub fn new(name: impl Into<String>, color: [u8; 3], bars: Vec<(f64, f64, f64, f64)>) -> Self {
        Self {
            name: name.into(),
            color,
            opacity: 0.8,
            bars,
        }
    }

    fn finite(&self) -> impl Iterator<Item = &(f64, f64, f64, f64)> {
        self.bars
            .iter()
            .filter(|b| b.0.is_finite() && b.1.is_finite() && b.2.is_finite() && b.3.is_finite())
    }
}

/// Where a panel's legend goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LegendPosition {
    /// Upper right corner of the plotting area.
    #[default]
    UpperRight,
    /// Upper left corner.
    UpperLeft,
    /// Lower left corner.
    LowerLeft,
    /// Lower right corner.
    LowerRight,
    /// No legend.
    Hidden,
}

/// One chart: axes, series and an optional marker line.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Caption above the chart.
    pub title: String,
    /// X-axis description.
    pub x_label: String,
    /// Y-axis description.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
    /// Bar groups, drawn under the lines.
    pub bars: Vec<Bars>,
    /// Fixed x range of a numeric axis; `None` fits the data.
    pub x_range: Option<(f64, f64)>,
    /// Names of the x positions `0, 1, ...` for a categorical axis; `None` for
    /// a numeric one.
    pub categories: Option<Vec<String>>,
    /// Fixed y range; `None` fits the data (error bars included) with a margin.
    pub y_range: Option<(f64, f64)>,
    /// A dashed vertical line at this x with its label (e.g. the chosen tau).
    pub marker: Option<(f64, String)>,
    /// Legend placement.
    pub legend: LegendPosition,
}

impl Panel {
    /// An empty panel with a numeric x axis.
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            series: Vec::new(),
            bars: Vec::new(),
            x_range: None,
            categories: None,
            y_range: None,
            marker: None,
            legend: LegendPosition::default(),
        }
    }

    /// The x range: categories get half a slot of margin either side.
    fn x_range(&self) -> (f64, f64) {
        if let Some(c) = &self.categories {
            return (-0.5, c.len().max(1) as f64 - 0.5);
        }
        if let Some(r) = self.x_range {
            return r;
        }
        let xs = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .chain(
                self.bars
                    .iter()
                    .flat_map(|b| b.finite().flat_map(|r| [r.0, r.1])),
            )
            .chain(self.marker.iter().map(|m| m.0))
            .filter(|x| x.is_finite());
        pad(bounds(xs), 0.0)
    }

    /// The y range: fixed, or the data and error bars with 5% margin.
    fn y_range(&self) -> (f64, f64) {
        if let Some(r) = self.y_range {
            return r;
        }
        let ys = self
            .series
            .iter()
            .flat_map(|s| {
                s.points.iter().enumerate().flat_map(move |(i, p)| {
                    let e = s
                        .error
                        .as_ref()
                        .and_then(|e| e.get(i))
                        .copied()
                        .filter(|e| e.is_finite())
                        .unwrap_or(0.0);
                    [p.1 - e, p.1 + e]
                })
            })
            .chain(
                self.bars
                    .iter()
                    .flat_map(|b| b.finite().flat_map(|r| [r.2, r.3])),
            );
        pad(bounds(ys.filter(|y| y.is_finite())), 0.05)
    }
}

/// Smallest and largest value; `(0, 1)` when there is none.
fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values
        .fold(None, |acc: Option<(f64, f64)>, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
        .unwrap_or((0.0, 1.0))
}

/// Widens `(lo, hi)` by `frac` of its span each side, and a degenerate range
/// to a unit one, so that a single value still gets axes.
fn pad((lo, hi): (f64, f64), frac: f64) -> (f64, f64) {
    let span = hi - lo;
    if span <= f64::EPSILON * hi.abs().max(1.0) {
        let h = (hi.abs() * 0.05).max(0.5);
        return (lo - h, hi + h);
    }
    (lo - frac * span, hi + frac * span)
}

/// Panels in a grid, with a title and a pixel size.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Title above all panels (empty: none).
    pub title: String,
    /// The panels, row by row.
    pub panels: Vec<Panel>,
    /// Panels per row.
    pub columns: usize,
    /// Width and height in pixels (SVG user units).
    pub size: (u32, u32),
}

impl Figure {
    /// One panel, 900 x 560 pixels, titled by the panel.
    pub fn single(panel: Panel) -> Self {
        Self {
            title: String::new(),
            panels: vec![panel],
            columns: 1,
            size: (900, 560),
        }
    }
}

/// Renders a figure as a PNG (RGB, 8 bit).
pub fn render_png(fig: &Figure) -> Result<Vec<u8>, ReportError> {
    check_size(fig)?;
    ensure_font()?;
    let (w, h) = fig.size;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw_figure(&root, fig)?;
        root.present().map_err(plot_err)?;
    }
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut png),
        &rgb,
        w,
        h,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| ReportError::Plot(format!("PNG encoding: {e}")))?;
    Ok(png)
}

/// Renders a figure as an SVG document.
pub fn render_svg(fig: &Figure) -> Result<String, ReportError> {
    check_size(fig)?;
    ensure_font()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, fig.size).into_drawing_area();
        draw_figure(&root, fig)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Writes `<stem>.png` and `<stem>.svg` (each atomically) and returns their
/// paths.
pub fn save(fig: &Figure, stem: &Path) -> Result<[PathBuf; 2], ReportError> {
    save_with_svg(fig, stem).map(|(paths, _)| paths)
}

/// [`save`], also returning the SVG document it wrote (the HTML report
/// inlines it rather than drawing the figure twice).
pub fn save_with_svg(fig: &Figure, stem: &Path) -> Result<([PathBuf; 2], String), ReportError> {
    let png_path = stem.with_extension("png");
    let svg_path = stem.with_extension("svg");
    let png = render_png(fig).map_err(|e| e.with_path(&png_path))?;
    let svg = render_svg(fig).map_err(|e| e.with_path(&svg_path))?;
    crate::write_file(&png_path, &png)?;
    crate::write_file(&svg_path, svg.as_bytes())?;
    Ok(([png_path, svg_path], svg))
}

fn check_size(fig: &Figure) -> Result<(), ReportError> {
    let (w, h) = fig.size;
    if w < 100 || h < 100 || fig.columns == 0 || fig.panels.is_empty() {
        return Err(ReportError::Plot(format!(
            "a figure needs at least one panel, one column and 100 x 100 pixels \
             (got {} panels, {} columns, {w} x {h})",
            fig.panels.len(),
            fig.columns
        )));
    }
    Ok(())
}

fn plot_err(e: impl std::fmt::Display) -> ReportError {
    ReportError::Plot(e.to_string())
}

fn draw_figure<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    fig: &Figure,
) -> Result<(), ReportError> {
    root.fill(&WHITE).map_err(plot_err)?;
    let area = if fig.title.is_empty() {
        root.clone()
    } else {
        root.titled(&fig.title, (FONT_FAMILY, 24))
            .map_err(plot_err)?
    };
    let columns = fig.columns.min(fig.panels.len());
    let rows = fig.panels.len().div_ceil(columns);
    let cells = area.split_evenly((rows, columns));
    for (cell, panel) in cells.iter().zip(&fig.panels) {
        draw_panel(cell, panel)?;
    }
    Ok(())
}

fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// Splits points into runs of finite points (a line breaks at a gap).
fn segments(points: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![Vec::new()];
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            out.last_mut().expect("never empty").push((x, y));
        } else if !out.last().expect("never empty").is_empty() {
            out.push(Vec::new());
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &Panel,
) -> Result<(), ReportError> {
    let (x0, x1) = p.x_range();
    let (y0, y1) = p.y_range();
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, (FONT_FAMILY, 18))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_err)?;

    let categories = p.categories.clone();
    let category_label = move |x: &f64| -> String {
        let i = x.round();
        match &categories {
            Some(c) if (x - i).abs() < 1e-6 && i >= 0.0 => {
                c.get(i as usize).cloned().unwrap_or_default()
            }
            Some(_) => String::new(),
            None => format_tick(*x),
        }
    };
    let y_label = |y: &f64| format_tick(*y);
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .axis_desc_style((FONT_FAMILY, 15))
        .label_style((FONT_FAMILY, 13))
        .x_label_formatter(&category_label)
        .y_label_formatter(&y_label)
        .light_line_style(RGBColor(235, 235, 235));
    if let Some(c) = &p.categories {
        // With x in [-0.5, n - 0.5] and at most n labels, the key points are
        // exactly the integers 0..n.
        mesh.x_labels(c.len().max(1)).disable_x_mesh();
    }
    mesh.draw().map_err(plot_err)?;

    if let Some((x, label)) = &p.marker {
        let style = ShapeStyle::from(&BLACK.mix(0.6)).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new(vec![(*x, y0), (*x, y1)], 5, 5, style))
            .map_err(plot_err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                label.clone(),
                (*x, y1),
                (FONT_FAMILY, 13).into_font().color(&BLACK.mix(0.8)),
            )))
            .map_err(plot_err)?;
    }

    for b in &p.bars {
        let color = rgb(b.color);
        let fill = color.mix(b.opacity.clamp(0.0, 1.0)).filled();
        let outline = ShapeStyle::from(&color).stroke_width(1);
        let rects: Vec<_> = b
            .finite()
            .map(|&(l, r, lo, hi)| [(l, lo), (r, hi)])
            .collect();
        chart
            .draw_series(rects.iter().map(|&c| Rectangle::new(c, fill)))
            .map_err(plot_err)?
            .label(b.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], fill));
        chart
            .draw_series(rects.iter().map(|&c| Rectangle::new(c, outline)))
            .map_err(plot_err)?;
    }

    for s in &p.series {
        let color = rgb(s.color);
        let style = ShapeStyle::from(&color).stroke_width(2);
        let mut labelled = false;
        let segs = segments(&s.points);
        for seg in &segs {
            let anno = if s.dashed {
                chart.draw_series(DashedLineSeries::new(seg.clone(), 8, 4, style))
            } else {
                chart.draw_series(LineSeries::new(seg.clone(), style))
            }
            .map_err(plot_err)?;
            if !labelled {
                anno.label(s.name.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
                labelled = true;
            }
        }
        if !labelled {
            // A series without a finite point still gets its legend entry.
            chart
                .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())
                .map_err(plot_err)?
                .label(s.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], style));
        }
        if s.markers {
            let filled = style.filled();
            chart
                .draw_series(
                    segs.iter()
                        .flatten()
                        .map(|&(x, y)| Circle::new((x, y), 4, filled)),
                )
                .map_err(plot_err)?;
        }
        if let Some(err) = &s.error {
            chart
                .draw_series(
                    s.points
                        .iter()
                        .zip(err)
                        .filter(|&(&(x, y), &e)| {
                            x.is_finite() && y.is_finite() && e.is_finite() && e > 0.0
                        })
                        .map(|(&(x, y), &e)| ErrorBar::new_vertical(x, y - e, y, y + e, style, 8)),
                )
                .map_err(plot_err)?;
        }
    }

    let position = match p.legend {
        LegendPosition::UpperRight => Some(SeriesLabelPosition::UpperRight),
        LegendPosition::UpperLeft => Some(SeriesLabelPosition::UpperLeft),
        LegendPosition::LowerLeft => Some(SeriesLabelPosition::LowerLeft),
        LegendPosition::LowerRight => Some(SeriesLabelPosition::LowerRight),
        LegendPosition::Hidden => None,
    };
    if let (Some(position), false) = (position, p.series.is_empty() && p.bars.is_empty()) {
        chart
            .configure_series_labels()
            .position(position)
            .label_font((FONT_FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()
            .map_err(plot_err)?;
    }
    Ok(())
}

/// Tick text: integers without decimals, otherwise up to 3 significant
/// decimals with trailing zeros removed.
fn format_tick(v: f64) -> String {
    if v == v.round() && v.abs() < 1e9 {
        return format!("{}", v as i64);
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_break_at_gaps() {
        let pts = [
            (0.0, 1.0),
            (1.0, f64::NAN),
            (2.0, 2.0),
            (3.0, 3.0),
            (4.0, f64::NAN),
        ];
        assert_eq!(
            segments(&pts),
            vec![vec![(0.0, 1.0)], vec![(2.0, 2.0), (3.0, 3.0)]]
        );
        assert!(segments(&[(0.0, f64::NAN)]).is_empty());
    }

    #[test]
    fn ranges_and_ticks() {
        assert_eq!(pad((2.0, 2.0), 0.05), (1.5, 2.5));
        assert_eq!(pad((0.0, 10.0), 0.1), (-1.0, 11.0));
        assert_eq!(bounds(std::iter::empty()), (0.0, 1.0));
        assert_eq!(format_tick(3.0), "3");
        assert_eq!(format_tick(0.25), "0.25");
        assert_eq!(format_tick(-0.0001), "0");
        let mut p = Panel::new("t", "x", "y");
        p.categories = Some(vec!["a".into(), "b".into(), "c".into()]);
        assert_eq!(p.x_range(), (-0.5, 2.5));
    }

    #[test]
    fn bars_set_the_ranges_and_render() {
        let mut p = Panel::new("bins", "confidence", "accuracy");
        p.bars.push(Bars::new(
            "accuracy",
            PALETTE[0],
            vec![
                (0.0, 0.5, 0.0, 0.25),
                (0.5, 1.0, 0.0, 0.75),
                (f64::NAN, 1.0, 0.0, 9.0),
            ],
        ));
        assert_eq!(p.x_range(), (0.0, 1.0));
        assert_eq!(p.y_range(), pad((0.0, 0.75), 0.05));
        p.x_range = Some((-1.0, 2.0));
        assert_eq!(p.x_range(), (-1.0, 2.0));
        let fig = Figure::single(p);
        let svg = render_svg(&fig).unwrap().to_ascii_uppercase();
        // The two finite bars, filled and outlined, in the series colour.
        assert!(svg.matches("<RECT").count() >= 4, "{svg}");
        assert!(svg.contains("#1F77B4"), "{svg}");
        assert_eq!(&render_png(&fig).unwrap()[1..4], b"PNG");
    }

    #[test]
    fn bad_figures_are_errors() {
        let fig = Figure {
            title: String::new(),
            panels: Vec::new(),
            columns: 1,
            size: (400, 300),
        };
        assert!(render_png(&fig).unwrap_err().to_string().contains("panel"));
        let mut fig = Figure::single(Panel::new("t", "x", "y"));
        fig.size = (10, 10);
        assert!(render_svg(&fig).is_err());
    }
}
