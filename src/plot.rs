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
/// `$a` and returns a plotters result.
macro_rules! draw_both {
    ($dir:expr, $stem:expr, $size:expr, |$a:ident| $body:expr) => {{
        $crate::plot::register_fonts();
        let png = $dir.join(format!("{}.png", $stem));
        {
            let $a = plotters::prelude::BitMapBackend::new(&png, $size).into_drawing_area();
            $body.map_err(|e| $crate::Error::Invalid(format!("{}: {e}", png.display())))?;
        }
        let svg = $dir.join(format!("{}.svg", $stem));
        {
            let $a = plotters::prelude::SVGBackend::new(&svg, $size).into_drawing_area();
            $body.map_err(|e| $crate::Error::Invalid(format!("{}: {e}", svg.display())))?;
        }
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
}
