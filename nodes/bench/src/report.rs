//! Results of a run: per-message CSV, summary.json, summary.md, PNG plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

/// One message's fate.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub mode: String,
    pub key: String,
    pub client: usize,
    pub stage: usize,
    /// Send time, seconds since the run's first send.
    pub send_s: f64,
    pub exit_tier: String,
    pub rtt_ms: f64,
    pub label: u8,
    pub predicted: Option<u32>,
    pub correct: Option<bool>,
}

/// Worker count of one tier at one time (seconds since the run's first send).
#[derive(Debug, Clone, Serialize)]
pub struct WorkerSample {
    pub mode: String,
    pub tier: String,
    pub t_s: f64,
    pub workers: f64,
    /// The tier's exit threshold at that time (moves only with adaptive exits).
    pub threshold: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub mode: String,
    pub exit_tier: String,
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub accuracy: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeSummary {
    pub mode: String,
    pub sent: usize,
    pub answered: usize,
    pub duplicates: usize,
    pub elapsed_s: f64,
    pub throughput_msg_s: f64,
    pub peak_workers: BTreeMap<String, f64>,
    pub peak_rss_mib: BTreeMap<String, f64>,
    pub groups: Vec<Group>,
    /// Scenario-specific figures (ramp saturation, burst timeline...).
    pub extra: BTreeMap<String, f64>,
}

pub fn group(mode: &str, tier: &str, rows: &[&Row]) -> Group {
    let mut rtt: Vec<f64> = rows.iter().map(|r| r.rtt_ms).collect();
    rtt.sort_by(f64::total_cmp);
    let labelled: Vec<bool> = rows.iter().filter_map(|r| r.correct).collect();
    Group {
        mode: mode.to_string(),
        exit_tier: tier.to_string(),
        count: rows.len(),
        p50_ms: ddnn::client::percentile(&rtt, 50.0),
        p95_ms: ddnn::client::percentile(&rtt, 95.0),
        p99_ms: ddnn::client::percentile(&rtt, 99.0),
        max_ms: rtt.last().copied().unwrap_or(f64::NAN),
        accuracy: (!labelled.is_empty())
            .then(|| labelled.iter().filter(|&&c| c).count() as f64 / labelled.len() as f64),
    }
}

/// Figures for load runs: worker-seconds per tier while messages were in flight, the lowest
/// threshold each tier reached, and the p99 RTT of each 10 s window of send times (a queue that
/// grows for the whole run shows as a rising series).
pub fn load_figures(rows: &[Row], workers: &[WorkerSample], elapsed_s: f64, extra: &mut BTreeMap<String, f64>) {
    let mut by_tier: BTreeMap<&str, Vec<&WorkerSample>> = BTreeMap::new();
    for w in workers {
        by_tier.entry(&w.tier).or_default().push(w);
    }
    let mut total = 0.0;
    for (tier, s) in &by_tier {
        // Each sample holds until the next one, clipped to [0, elapsed].
        let mut ws = 0.0;
        for pair in s.windows(2) {
            let (a, b) = (pair[0].t_s.max(0.0), pair[1].t_s.min(elapsed_s));
            if b > a {
                ws += pair[0].workers * (b - a);
            }
        }
        total += ws;
        extra.insert(format!("worker_s_{tier}"), ws);
        if let Some(min) = s.iter().filter_map(|w| w.threshold).reduce(f64::min) {
            extra.insert(format!("min_threshold_{tier}"), min);
        }
    }
    extra.insert("worker_s_total".to_string(), total);
    let windows = (elapsed_s / 10.0).ceil() as usize;
    for k in 0..windows.min(30) {
        let mut rtt: Vec<f64> = rows
            .iter()
            .filter(|r| r.send_s >= k as f64 * 10.0 && r.send_s < (k + 1) as f64 * 10.0)
            .map(|r| r.rtt_ms)
            .collect();
        if rtt.is_empty() {
            continue;
        }
        rtt.sort_by(f64::total_cmp);
        extra.insert(format!("p99_ms_sent_{:03}s", k * 10), ddnn::client::percentile(&rtt, 99.0));
    }
}

pub fn write_csv(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let mut s = String::from("mode,key,client,stage,send_ts_s,exit_tier,rtt_ms,label,predicted,correct\n");
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.6},{},{:.3},{},{},{}",
            r.mode,
            r.key,
            r.client,
            r.stage,
            r.send_s,
            r.exit_tier,
            r.rtt_ms,
            r.label,
            r.predicted.map(|p| p.to_string()).unwrap_or_default(),
            r.correct.map(|c| c.to_string()).unwrap_or_default()
        );
    }
    std::fs::write(path, s)?;
    Ok(())
}

pub fn markdown(title: &str, summaries: &[ModeSummary]) -> String {
    let mut s = format!("## {title}\n\n| mode | exit tier | count | p50 ms | p95 ms | p99 ms | max ms | accuracy |\n|---|---|---|---|---|---|---|---|\n");
    for m in summaries {
        for g in &m.groups {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |",
                g.mode,
                g.exit_tier,
                g.count,
                g.p50_ms,
                g.p95_ms,
                g.p99_ms,
                g.max_ms,
                g.accuracy.map(|a| format!("{:.2}%", a * 100.0)).unwrap_or_else(|| "–".into())
            );
        }
    }
    s.push_str("\n| mode | sent | answered | duplicates | elapsed s | throughput msg/s | peak workers | peak RSS MiB |\n|---|---|---|---|---|---|---|---|\n");
    for m in summaries {
        let fmt =
            |map: &BTreeMap<String, f64>| map.iter().map(|(k, v)| format!("{k} {v:.0}")).collect::<Vec<_>>().join(", ");
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.1} | {:.1} | {} | {} |",
            m.mode,
            m.sent,
            m.answered,
            m.duplicates,
            m.elapsed_s,
            m.throughput_msg_s,
            fmt(&m.peak_workers),
            fmt(&m.peak_rss_mib)
        );
        for (k, v) in &m.extra {
            let _ = writeln!(s, "|   {} | {k} = {v:.3} | | | | | | |", m.mode);
        }
    }
    s
}

/// Loads DejaVu Sans for plot text (Debian's fonts-dejavu-core; scripts/setup.sh installs it).
pub fn register_font() -> anyhow::Result<()> {
    let candidates = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"];
    let path = candidates
        .iter()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| anyhow::anyhow!("no DejaVuSans.ttf for plot labels (apt-get install fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path} is not a usable font"))?;
    Ok(())
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Box plots of RTT (ms, log scale) per mode and exit tier (like the paper's Figures 3/5/8).
pub fn boxplot(path: &Path, title: &str, rows: &[Row]) -> anyhow::Result<()> {
    let mut groups: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for r in rows {
        groups.entry((r.mode.clone(), r.exit_tier.clone())).or_default().push(r.rtt_ms.max(0.1));
    }
    let labels: Vec<String> = groups.keys().map(|(m, t)| format!("{m}/{t}")).collect();
    let max = groups.values().flatten().copied().fold(1.0f64, f64::max) * 1.5;
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = labels.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(70)
        .build_cartesian_2d((0..n).into_segmented(), (0.1f32..max as f32).log_scale())?;
    chart
        .configure_mesh()
        .y_desc("round-trip time (ms, log scale)")
        .x_labels(n)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 14))
        .draw()?;
    for (i, (_, v)) in groups.iter().enumerate() {
        let q = Quartiles::new(v);
        let color = COLORS[i % COLORS.len()];
        chart.draw_series(std::iter::once(
            Boxplot::new_vertical(SegmentValue::CenterOf(i), &q).width(30).whisker_width(0.6).style(color),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// RTT of each message over time with the worker counts overlaid (like Figures 4/6/7).
pub fn timeline(path: &Path, title: &str, rows: &[Row], workers: &[WorkerSample]) -> anyhow::Result<()> {
    let t_max = rows.iter().map(|r| r.send_s).chain(workers.iter().map(|w| w.t_s)).fold(1.0f64, f64::max);
    let rtt_max = rows.iter().map(|r| r.rtt_ms).fold(1.0f64, f64::max) * 1.1;
    let w_max = workers.iter().map(|w| w.workers).fold(1.0f64, f64::max) + 1.0;
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..rtt_max)?
        .set_secondary_coord(0.0..t_max, 0.0..w_max);
    chart
        .configure_mesh()
        .x_desc("time since first send (s)")
        .y_desc("round-trip time (ms)")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart.configure_secondary_axes().y_desc("workers").label_style(("sans-serif", 14)).draw()?;
    let tiers: Vec<String> = {
        let mut t: Vec<String> = rows.iter().map(|r| r.exit_tier.clone()).collect();
        t.sort();
        t.dedup();
        t
    };
    for (i, tier) in tiers.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(
                rows.iter().filter(|r| &r.exit_tier == tier).map(|r| Circle::new((r.send_s, r.rtt_ms), 2, c.filled())),
            )?
            .label(format!("RTT, exit at {tier}"))
            .legend(move |(x, y)| Circle::new((x, y), 4, c.filled()));
    }
    let mut wt: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for w in workers {
        wt.entry(&w.tier).or_default().push((w.t_s, w.workers));
    }
    for (i, (tier, pts)) in wt.into_iter().enumerate() {
        let c = COLORS[(i + 3) % COLORS.len()];
        chart
            .draw_secondary_series(LineSeries::new(pts, c.stroke_width(2)))?
            .label(format!("{tier} workers"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}
