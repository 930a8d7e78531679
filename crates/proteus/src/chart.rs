//! The SVG chart of `proteus experiment results --chart`: each treatment arm's lift on the
//! primary metric over time, with its interval as a band, against a zero line. Plain SVG, so it
//! opens in any browser and needs no plotting dependency.

use std::fmt::Write as _;

use serde_json::Value;

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

/// One arm's points: (time, lift, lower, upper).
type Series = Vec<(i64, f64, Option<f64>, Option<f64>)>;

/// Renders `points` (the `points` of `GET /v1/experiments/{id}/results/history`).
pub fn lift_chart(title: &str, points: &Value) -> String {
    let mut arms: Vec<(String, Series)> = Vec::new();
    let mut relative = true;
    for point in points.as_array().into_iter().flatten() {
        let Some(time_ms) = point["time_ms"].as_i64() else {
            continue;
        };
        for arm in point["arms"].as_array().into_iter().flatten() {
            let (Some(variant), Some(lift)) = (arm["variant"].as_str(), arm["lift"].as_f64())
            else {
                continue;
            };
            relative &= arm["scale"] == "relative";
            let sample = (time_ms, lift, arm["lower"].as_f64(), arm["upper"].as_f64());
            match arms.iter_mut().find(|(name, _)| name == variant) {
                Some((_, series)) => series.push(sample),
                None => arms.push((variant.to_owned(), vec![sample])),
            }
        }
    }
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="28" font-size="16">{}</text>
"#,
        escape(title)
    );
    if arms.is_empty() {
        let _ = write!(
            svg,
            r#"<text x="{LEFT}" y="{}">No results yet: no treatment arm has a comparison on the primary metric.</text>
</svg>
"#,
            HEIGHT / 2.0
        );
        return svg;
    }
    let samples = arms.iter().flat_map(|(_, series)| series.iter());
    let (mut t_min, mut t_max) = (i64::MAX, i64::MIN);
    let (mut y_min, mut y_max) = (0.0_f64, 0.0_f64);
    for &(t, lift, lower, upper) in samples {
        t_min = t_min.min(t);
        t_max = t_max.max(t);
        for y in [Some(lift), lower, upper].into_iter().flatten() {
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
    }
    let pad = ((y_max - y_min) * 0.08).max(1e-9);
    let (y_min, y_max) = (y_min - pad, y_max + pad);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: i64| {
        if t_max == t_min {
            LEFT + plot_w / 2.0
        } else {
            LEFT + (t - t_min) as f64 / (t_max - t_min) as f64 * plot_w
        }
    };
    let y = |v: f64| TOP + (y_max - v) / (y_max - y_min) * plot_h;
    let label = |v: f64| {
        if relative {
            format!("{:+.1}%", v * 100.0)
        } else {
            format!("{v:+.4}")
        }
    };
    // Axes, grid and the zero line.
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##
    );
    for i in 0..=4 {
        let v = y_min + (y_max - y_min) * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y(v) + 4.0,
            label(v),
            y = y(v),
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" x2="{}" y1="{y0:.1}" y2="{y0:.1}" stroke="#333" stroke-dasharray="4 3"/>"##,
        LEFT + plot_w,
        y0 = y(0.0)
    );
    let hours = (t_max - t_min) as f64 / 3_600_000.0;
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="{}">start</text><text x="{}" y="{}" text-anchor="end">+{hours:.1} h</text><text x="{}" y="{}" text-anchor="middle">{} lift, with its interval as analysed (always-valid or fixed-horizon)</text>"#,
        HEIGHT - BOTTOM + 18.0,
        LEFT + plot_w,
        HEIGHT - BOTTOM + 18.0,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0,
        if relative { "relative" } else { "absolute" },
    );
    for (index, (variant, series)) in arms.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        // The interval as a band where both ends are bounded.
        let bounded: Vec<_> = series
            .iter()
            .filter_map(|&(t, _, lower, upper)| Some((t, lower?, upper?)))
            .collect();
        if bounded.len() > 1 {
            let mut outline: Vec<String> = bounded
                .iter()
                .map(|&(t, _, upper)| format!("{:.1},{:.1}", x(t), y(upper)))
                .collect();
            outline.extend(
                bounded
                    .iter()
                    .rev()
                    .map(|&(t, lower, _)| format!("{:.1},{:.1}", x(t), y(lower))),
            );
            let _ = writeln!(
                svg,
                r#"<polygon points="{}" fill="{colour}" fill-opacity="0.15" stroke="none"/>"#,
                outline.join(" ")
            );
        }
        for &(t, lower, upper) in &bounded {
            let _ = writeln!(
                svg,
                r#"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="{colour}" stroke-opacity="0.6"/>"#,
                y(upper),
                y(lower),
                x = x(t),
            );
        }
        let line: Vec<String> = series
            .iter()
            .map(|&(t, lift, _, _)| format!("{:.1},{:.1}", x(t), y(lift)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            line.join(" ")
        );
        for &(t, lift, _, _) in series {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                x(t),
                y(lift)
            );
        }
        let &(_, lift, lower, upper) = series.last().expect("a series has a point");
        let bound = |end: Option<f64>| end.map_or("∞".to_owned(), label);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" fill="{colour}">{} {} [{}, {}]</text>"#,
            LEFT + plot_w + 10.0,
            TOP + 16.0 + 18.0 * index as f64,
            escape(variant),
            label(lift),
            bound(lower),
            bound(upper),
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn draws_a_band_a_line_and_a_legend_per_arm() {
        let points = json!([
            {"time_ms": 0, "arms": [{"variant": "green", "n": 10, "scale": "relative",
                                      "lift": 0.2, "lower": -0.5, "upper": 0.9}]},
            {"time_ms": 3_600_000, "arms": [{"variant": "green", "n": 20, "scale": "relative",
                                              "lift": 0.1, "lower": -0.1, "upper": null}]}
        ]);
        let svg = lift_chart("x <&> y", &points);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("x &lt;&amp;&gt; y"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("<circle").count(), 2);
        // The unbounded upper end is shown as such, not invented.
        assert!(svg.contains("green +10.0% [-10.0%, ∞]"), "{svg}");
        assert!(svg.contains("+1.0 h"), "{svg}");
    }

    #[test]
    fn an_empty_history_says_so() {
        let svg = lift_chart("t", &json!([]));
        assert!(svg.contains("No results yet"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
