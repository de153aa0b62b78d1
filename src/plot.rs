//! Drawing helpers shared by the analysis and the sweep report: every picture is written twice,
//! as PNG (for markdown) and SVG (for papers).
use plotters::coord::Shift;
use plotters::prelude::*;

pub(crate) type Area<DB> = DrawingArea<DB, Shift>;
pub(crate) type Drawn<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// matplotlib's "tab10" colours, so that the first series look as researchers expect.
pub(crate) const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
];

/// Draws the series legend (top right, on a translucent white box) and presents the picture.
pub(crate) fn legend_and_present<
    'a,
    DB: DrawingBackend + 'a,
    CT: plotters::coord::CoordTranslate,
>(
    chart: &mut ChartContext<'a, DB, CT>,
    root: &Area<DB>,
) -> Drawn<DB> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()
}

/// DejaVu Sans (see `assets/fonts/LICENSE`), the one font every caption and label uses.
const SANS: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// Makes the bundled font plotters' "sans-serif"; plotters' text lookups fail without it.
pub(crate) fn register_fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font, checked by the tests.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, SANS);
    });
}

/// Draws the same chart as `STEM.png` and `STEM.svg` in `dir`; `$body` uses the drawing area
/// `$a` and returns a plotters result. Each picture is drawn to a temporary name and renamed into
/// place, so a failed drawing leaves no torn file (nor replaces an older good one).
macro_rules! draw_both {
    ($dir:expr, $stem:expr, $size:expr, |$a:ident| $body:expr) => {{
        $crate::plot::register_fonts();
        let png = $dir.join(format!("{}.png", $stem));
        // The bitmap backend picks its encoder from the extension, so the temporary name ends
        // in .png too.
        let tmp = $dir.join(format!(".{}.tmp-{}.png", $stem, std::process::id()));
        let drawn = {
            let $a = plotters::prelude::BitMapBackend::new(&tmp, $size).into_drawing_area();
            $body
        };
        let moved = drawn
            .map_err(|e| $crate::Error::Invalid(format!("{}: {e}", png.display())))
            .and_then(|()| std::fs::rename(&tmp, &png).map_err(|e| $crate::Error::io(&png, e)));
        if moved.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        moved?;
        let svg = $dir.join(format!("{}.svg", $stem));
        let mut text = String::new();
        {
            let $a =
                plotters::prelude::SVGBackend::with_string(&mut text, $size).into_drawing_area();
            $body.map_err(|e| $crate::Error::Invalid(format!("{}: {e}", svg.display())))?;
        }
        $crate::atomic::write_bytes(&svg, text.as_bytes())?;
    }};
}
pub(crate) use draw_both;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_render_with_the_bundled_font() {
        // Without a registered font plotters cannot lay out text at all (this machine's
        // fontconfig is not consulted any more), so a drawn caption shows the bundled one works.
        register_fonts();
        let (w, h) = (200u32, 60u32);
        let mut buf = vec![255u8; (w * h * 3) as usize];
        {
            let area = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            area.draw(&Text::new("Accuracy 0.57", (5, 5), ("sans-serif", 30)))
                .unwrap();
            area.present().unwrap();
        }
        let inked = buf
            .chunks(3)
            .filter(|px| px.iter().any(|&c| c < 128))
            .count();
        // Thirteen glyphs at 30 px cover a few hundred pixels; an empty or boxed rendering
        // would not.
        assert!(inked > 300, "{inked} dark pixels");
        assert!(inked < (w * h / 2) as usize, "{inked} dark pixels");
    }

    fn draw<DB: DrawingBackend>(a: &Area<DB>, fail: bool) -> Drawn<DB> {
        a.fill(&WHITE)?;
        if fail {
            return Err(DrawingAreaErrorKind::LayoutError);
        }
        a.draw(&Text::new("x", (5, 5), ("sans-serif", 12)))?;
        a.present()
    }

    fn both(dir: &std::path::Path, fail: bool) -> crate::Result<()> {
        draw_both!(dir, "chart", (40, 30), |a| draw(&a, fail));
        Ok(())
    }

    #[test]
    fn pictures_appear_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let names = || {
            let mut v: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert!(both(dir.path(), true).is_err());
        assert!(names().is_empty(), "{:?}", names());
        both(dir.path(), false).unwrap();
        assert_eq!(names(), ["chart.png", "chart.svg"]);
        let png = std::fs::read(dir.path().join("chart.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        // A failed redraw keeps the good pictures.
        assert!(both(dir.path(), true).is_err());
        assert_eq!(names(), ["chart.png", "chart.svg"]);
        assert_eq!(std::fs::read(dir.path().join("chart.png")).unwrap(), png);
    }
}
