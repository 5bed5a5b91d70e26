//! The comparison's PNG plot (plotters, bitmap backend): for each frame size a row of two
//! charts over the flow counts, Mpps at the sink per DUT and DUT CPU ns per packet, the
//! medians over the rounds (`Report::summary`).
//!
//! Text (axes, legend, titles) needs a font: plotters draws it through ab_glyph from TrueType
//! bytes, which are read at run time from the system (`NATGW_BENCH_FONT`, else DejaVu Sans /
//! Liberation Sans / FreeSans where Debian and others install them) rather than embedded, so
//! the binary carries no 700 kB font and no font licence. Without one the charts are drawn
//! without any text and the markdown says which colour is which DUT and what the axes are.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::compare::{Dut, Report, Summary};

/// The family name the font is registered under.
const FAMILY: &str = "natgw-bench-sans";

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

/// What the plot was drawn with.
#[derive(Clone, Debug)]
pub struct Plotted {
    /// The font file, `None`: drawn without text.
    pub font: Option<String>,
    pub width: u32,
    pub height: u32,
}

impl Plotted {
    /// A sentence for the markdown.
    pub fn describe(&self) -> String {
        let colours: Vec<String> = crate::compare::ALL_DUTS
            .iter()
            .map(|&d| format!("{} {}", d.name(), colour_name(d)))
            .collect();
        match &self.font {
            Some(f) => format!(
                "{}x{}; per frame size, Mpps at the sink (left) and DUT CPU ns/packet (right) over the flow counts, medians over the rounds; text in {f}",
                self.width, self.height
            ),
            None => format!(
                "{}x{}, drawn WITHOUT text: no TrueType font found (NATGW_BENCH_FONT or {}); one row per frame size in the order of the table, \
                 left Mpps at the sink, right DUT CPU ns/packet, x the flow counts in the table's order left to right, y from 0 to the row's largest value, \
                 colours: {}",
                self.width,
                self.height,
                FONT_PATHS.join(", "),
                colours.join(", ")
            ),
        }
    }
}

fn colour(d: Dut) -> RGBColor {
    match d {
        Dut::NatgwBusy => RGBColor(214, 39, 40),
        Dut::NatgwAdaptive => RGBColor(255, 127, 14),
        Dut::NatgwForward => RGBColor(227, 119, 194),
        Dut::RawForwarder => RGBColor(44, 160, 44),
        Dut::Kernel => RGBColor(31, 119, 180),
        Dut::KernelRps => RGBColor(23, 190, 207),
        Dut::KernelFlowtable => RGBColor(148, 103, 189),
        Dut::Testpmd => RGBColor(127, 127, 127),
    }
}

fn colour_name(d: Dut) -> &'static str {
    match d {
        Dut::NatgwBusy => "red",
        Dut::NatgwAdaptive => "orange",
        Dut::NatgwForward => "pink",
        Dut::RawForwarder => "green",
        Dut::Kernel => "blue",
        Dut::KernelRps => "cyan",
        Dut::KernelFlowtable => "purple",
        Dut::Testpmd => "grey",
    }
}

/// Registers the first font found, once per process (plotters keeps `&'static` font bytes:
/// the file is read once and leaked, a few hundred kB).
fn font() -> Option<&'static str> {
    static FONT: OnceLock<Option<String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let env = std::env::var("NATGW_BENCH_FONT").ok();
        for p in env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS.iter().copied())
        {
            let Ok(bytes) = std::fs::read(p) else {
                continue;
            };
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).is_ok() {
                return Some(p.to_string());
            }
        }
        None
    })
    .as_deref()
}

/// Writes the plot of `r` to `path` (PNG), with text if a font is found.
pub fn write_png(r: &Report, path: &Path) -> Result<Plotted, String> {
    draw(r, path, font())
}

/// `font`: the registered font's file (text drawn) or `None` (no text at all: plotters fails
/// on any text without a font).
fn draw(r: &Report, path: &Path, font: Option<&str>) -> Result<Plotted, String> {
    let sum = r.summary();
    let sizes = &r.options.sizes;
    let flows = &r.options.flows;
    let (width, row_h) = (1400u32, 460u32);
    let height = row_h * sizes.len().max(1) as u32;
    let e = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    {
        let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let rows = root.split_evenly((sizes.len().max(1), 2));
        for (i, &size) in sizes.iter().enumerate() {
            let at: Vec<&Summary> = sum.iter().filter(|s| s.size == size).collect();
            for (j, area) in rows[2 * i..2 * i + 2].iter().enumerate() {
                let value = |s: &Summary| -> Option<f64> {
                    if j == 0 {
                        Some(s.sink_pps.median / 1e6)
                    } else {
                        s.ns_per_packet.map(|x| x.median)
                    }
                };
                let ymax = at
                    .iter()
                    .filter_map(|s| value(s))
                    .filter(|v| v.is_finite())
                    .fold(0.0f64, f64::max)
                    .max(1e-9)
                    * 1.15;
                let xmax = flows.len().saturating_sub(1) as f64;
                // With text, an empty band right of the last flow count holds the legend:
                // drawn over the lines (upper right) it hid the highest points.
                let legend_room = if font.is_some() {
                    (xmax + 0.6) * 0.55
                } else {
                    0.0
                };
                let mut b = ChartBuilder::on(area);
                b.margin(12);
                if font.is_some() {
                    let title = if j == 0 {
                        format!("{size}-byte frames: Mpps at the sink")
                    } else {
                        format!("{size}-byte frames: DUT CPU ns per packet")
                    };
                    b.caption(title, (FAMILY, 20))
                        .x_label_area_size(40)
                        .y_label_area_size(70);
                }
                let mut c = b
                    .build_cartesian_2d(-0.3f64..xmax + 0.3 + legend_room, 0f64..ymax)
                    .map_err(|x| e(&x))?;
                let mut mesh = c.configure_mesh();
                if font.is_some() {
                    let label = |x: &f64| {
                        let k = x.round();
                        if (x - k).abs() < 1e-6 && k >= 0.0 {
                            flows.get(k as usize).map_or(String::new(), u64::to_string)
                        } else {
                            String::new()
                        }
                    };
                    let ylabel = |y: &f64| {
                        if j == 0 {
                            format!("{y:.3}")
                        } else {
                            format!("{y:.0}")
                        }
                    };
                    // One label per whole number across the range, legend band included
                    // (fewer, and plotters labels every other flow count); the formatter
                    // leaves the band's empty.
                    mesh.x_labels((xmax + legend_room).ceil() as usize + 2)
                        .x_label_formatter(&label)
                        .y_label_formatter(&ylabel)
                        .light_line_style(WHITE)
                        .x_desc("flows")
                        .y_desc(if j == 0 { "Mpps" } else { "ns/packet" })
                        .label_style((FAMILY, 14))
                        .axis_desc_style((FAMILY, 15))
                        .draw()
                        .map_err(|x| e(&x))?;
                } else {
                    mesh.x_labels(0)
                        .y_labels(0)
                        .x_label_formatter(&|_| String::new())
                        .y_label_formatter(&|_| String::new())
                        .draw()
                        .map_err(|x| e(&x))?;
                }
                for &dut in &r.options.duts {
                    let pts: Vec<(f64, f64)> = flows
                        .iter()
                        .enumerate()
                        .filter_map(|(k, &f)| {
                            at.iter()
                                .find(|s| s.dut == dut && s.flows == f)
                                .and_then(|s| value(s))
                                .filter(|v| v.is_finite())
                                .map(|v| (k as f64, v))
                        })
                        .collect();
                    if pts.is_empty() {
                        continue;
                    }
                    let col = colour(dut);
                    let s = c
                        .draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))
                        .map_err(|x| e(&x))?;
                    if font.is_some() {
                        s.label(dut.name()).legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(3))
                        });
                    }
                    c.draw_series(
                        pts.iter()
                            .map(|&p| Circle::new(p, 4, ShapeStyle::from(col).filled())),
                    )
                    .map_err(|x| e(&x))?;
                }
                if font.is_some() {
                    c.configure_series_labels()
                        .position(SeriesLabelPosition::UpperRight)
                        .background_style(WHITE.mix(0.85))
                        .border_style(BLACK)
                        .label_font((FAMILY, 13))
                        .draw()
                        .map_err(|x| e(&x))?;
                }
            }
        }
        root.present().map_err(|x| e(&x))?;
    }
    Ok(Plotted {
        font: font.map(str::to_string),
        width,
        height,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::{CompareOptions, Cpu, Measured, Row};

    fn report() -> Report {
        let mut o = CompareOptions::full("natgw".into());
        o.duts = vec![Dut::NatgwBusy, Dut::Kernel, Dut::RawForwarder];
        o.flows = vec![1, 1024, 1 << 20];
        o.sizes = vec![64, 1500];
        o.rounds = 2;
        let mut rows = Vec::new();
        for round in 0..2 {
            for (i, &dut) in o.duts.iter().enumerate() {
                for &flows in &o.flows {
                    for &size in &o.sizes {
                        rows.push(Row {
                            dut,
                            flows,
                            size,
                            round,
                            result: Ok(Measured {
                                sent: 1000,
                                gen_pps: 2e5,
                                received: 900 - 100 * i as u64,
                                sink_pps: 1e5 * (i + 1 + round) as f64,
                                loss: 0.1,
                                sink_dropped: 0,
                                cpu: Cpu {
                                    softirq: 10_000_000,
                                    ..Cpu::default()
                                },
                                zero_copy: false,
                                dut_drops: None,
                                dut_stats: None,
                            }),
                        });
                    }
                }
            }
        }
        Report::of_rows(o, rows)
    }

    fn png_size(p: &Path) -> (u32, u32) {
        let b = std::fs::read(p).unwrap();
        assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
        assert_eq!(&b[12..16], b"IHDR");
        let be = |o: usize| u32::from_be_bytes(b[o..o + 4].try_into().unwrap());
        (be(16), be(20))
    }

    #[test]
    fn plots_with_and_without_a_font() {
        let r = report();
        let dir = std::env::temp_dir().join(format!("natgw-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Without a font: no text drawn, and that must not fail.
        let p = dir.join("bare.png");
        let got = draw(&r, &p, None).unwrap();
        assert_eq!(png_size(&p), (1400, 2 * 460));
        assert!(
            got.describe().contains("natgw-busy red"),
            "{}",
            got.describe()
        );
        // With one where the system has one.
        if font().is_some() {
            let p = dir.join("text.png");
            let got = write_png(&r, &p).unwrap();
            assert!(got.font.is_some());
            assert_eq!(png_size(&p), (1400, 2 * 460));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
