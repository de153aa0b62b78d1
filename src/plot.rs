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

/// Draws the same chart as `STEM.png` and `STEM.svg` in `dir`; `$body` uses the drawing area
/// `$a` and returns a plotters result.
macro_rules! draw_both {
    ($dir:expr, $stem:expr, $size:expr, |$a:ident| $body:expr) => {{
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
