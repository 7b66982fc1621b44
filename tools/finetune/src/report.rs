//! The training report: JSON for tools, and a PNG of the loss curves for people.

use std::path::Path;

use plotters::prelude::*;

use crate::train::Epoch;

/// Fonts tried for the plot's text, in order (the plot is drawn without text when none exists).
const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// A curve: its legend, its colour, and its value per epoch.
type Series = (&'static str, RGBColor, fn(&Epoch) -> f64);

/// Registers a system font for the plot's text; false when none is found.
fn register_font() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| {
        for path in FONTS {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws the training and validation loss per epoch, and the validation accuracy, into a PNG.
pub fn plot(path: &Path, epochs: &[Epoch], best_epoch: usize) -> anyhow::Result<()> {
    let text = register_font();
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_loss = epochs
        .iter()
        .flat_map(|e| [e.train_loss, e.validation_loss])
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.1;
    let last = epochs.len().max(2) as f64;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60);
    if text {
        builder.caption(
            format!("Training report (best epoch {best_epoch})"),
            ("sans-serif", 24),
        );
    }
    let mut chart = builder
        .build_cartesian_2d(1.0..last, 0.0..max_loss)?
        .set_secondary_coord(1.0..last, 0.0..1.0);
    if text {
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("cross-entropy")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc("validation accuracy")
            .draw()?;
    } else {
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_y_mesh()
            .draw()?;
    }
    let losses: [Series; 2] = [
        ("training loss", BLUE, |e| e.train_loss),
        ("validation loss", RED, |e| e.validation_loss),
    ];
    for (label, color, value) in losses {
        let drawn = chart.draw_series(LineSeries::new(
            epochs.iter().map(|e| (e.epoch as f64, value(e))),
            color.stroke_width(2),
        ))?;
        if text {
            drawn
                .label(label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
    }
    let accuracy = chart.draw_secondary_series(LineSeries::new(
        epochs
            .iter()
            .map(|e| (e.epoch as f64, e.validation_accuracy)),
        GREEN.stroke_width(2),
    ))?;
    if text {
        accuracy
            .label("validation accuracy (right axis)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], GREEN));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::MiddleRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
