//! One row per policy: cache hit rate, TTFT, balance, and the router's own cost.

use crate::model::Outcome;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub policy: String,
    pub hit_rate: f64,
    /// `hit_rate` over the oracle's (None when the oracle was not run).
    pub hit_vs_oracle: Option<f64>,
    pub mean_ttft_ms: f64,
    pub p50_ttft_ms: f64,
    pub p99_ttft_ms: f64,
    /// Mean ms per output token after the first (requests with more than one).
    pub mean_tpot_ms: f64,
    /// Output tokens per second, from the first arrival to the last finish.
    pub output_tokens_per_s: f64,
    /// For a policy that predicts TTFT: the median of |predicted - simulated| / simulated.
    pub ttft_estimate_error: Option<f64>,
    /// For a policy that predicts hits: the share of the leading blocks it expected its picks
    /// to hold that they really held at admission.
    pub prediction_accuracy: Option<f64>,
    /// Requests on the busiest worker over requests on the idlest (None if one got none).
    pub max_min_requests: Option<f64>,
    pub route_mean_ns: f64,
    pub route_p99_ns: f64,
    pub decisions_per_s: f64,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub fn rows(outcomes: &[Outcome]) -> Vec<Row> {
    let hit = |o: &Outcome| o.hit_tokens as f64 / o.input_tokens.max(1) as f64;
    let oracle = outcomes.iter().find(|o| o.policy == "oracle").map(hit);
    outcomes
        .iter()
        .map(|o| {
            let mut ttft = o.ttft_ms.clone();
            ttft.sort_by(f64::total_cmp);
            let mut ns: Vec<f64> = o.route_ns.iter().map(|&n| n as f64).collect();
            ns.sort_by(f64::total_cmp);
            let mean_ns = ns.iter().sum::<f64>() / ns.len().max(1) as f64;
            let (max, min) = (
                *o.per_worker.iter().max().unwrap_or(&0),
                *o.per_worker.iter().min().unwrap_or(&0),
            );
            Row {
                policy: o.policy.clone(),
                hit_rate: hit(o),
                hit_vs_oracle: oracle.filter(|h| *h > 0.0).map(|h| hit(o) / h),
                mean_ttft_ms: ttft.iter().sum::<f64>() / ttft.len().max(1) as f64,
                p50_ttft_ms: quantile(&ttft, 0.5),
                p99_ttft_ms: quantile(&ttft, 0.99),
                mean_tpot_ms: o.tpot_ms.iter().sum::<f64>() / o.tpot_ms.len().max(1) as f64,
                output_tokens_per_s: if o.span_ms > 0.0 {
                    o.output_tokens as f64 * 1000.0 / o.span_ms
                } else {
                    0.0
                },
                ttft_estimate_error: (!o.estimate_errors.is_empty()).then(|| {
                    let mut e = o.estimate_errors.clone();
                    e.sort_by(f64::total_cmp);
                    quantile(&e, 0.5)
                }),
                prediction_accuracy: (o.predicted_blocks > 0)
                    .then(|| o.predicted_and_hit as f64 / o.predicted_blocks as f64),
                max_min_requests: (min > 0).then(|| max as f64 / min as f64),
                route_mean_ns: mean_ns,
                route_p99_ns: quantile(&ns, 0.99),
                decisions_per_s: if mean_ns > 0.0 { 1e9 / mean_ns } else { 0.0 },
            }
        })
        .collect()
}

/// The line under the table: the TTFT no policy can beat (`model::ttft_lower_bound_ms`), and
/// each policy's p99 over its p99.
pub fn bound_line(bound_ms: &[f64], rows: &[Row]) -> String {
    let mut sorted = bound_ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mean = sorted.iter().sum::<f64>() / sorted.len().max(1) as f64;
    let p99 = quantile(&sorted, 0.99);
    let ratios: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {:.2}x", r.policy, r.p99_ttft_ms / p99))
        .collect();
    format!(
        "TTFT lower bound for any policy (no queueing; every block an earlier request brought is \
         cached where it goes): mean {mean:.1} ms, p99 {p99:.1} ms.\np99 TTFT over that bound: {}",
        ratios.join(", ")
    )
}

/// A line per policy that predicts TTFT: how far its predictions were from the simulation.
pub fn estimate_lines(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| {
            let e = r.ttft_estimate_error?;
            Some(format!(
                "{}: predicted TTFT within {:.0}% of the simulated one for half the requests (median absolute error)",
                r.policy,
                e * 100.0
            ))
        })
        .collect()
}

pub fn table(rows: &[Row]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "policy",
        "token hit rate",
        "vs oracle",
        "mean TTFT (ms)",
        "p50 TTFT (ms)",
        "p99 TTFT (ms)",
        "mean TPOT (ms)",
        "output tok/s",
        "predicted hits held",
        "max/min reqs per worker",
        "route mean (ns)",
        "route p99 (ns)",
        "decisions/s",
    ]);
    for r in rows {
        t.add_row(vec![
            r.policy.clone(),
            format!("{:.1}%", r.hit_rate * 100.0),
            r.hit_vs_oracle
                .map_or("-".into(), |v| format!("{:.1}%", v * 100.0)),
            format!("{:.1}", r.mean_ttft_ms),
            format!("{:.1}", r.p50_ttft_ms),
            format!("{:.1}", r.p99_ttft_ms),
            format!("{:.2}", r.mean_tpot_ms),
            format!("{:.0}", r.output_tokens_per_s),
            r.prediction_accuracy
                .map_or("-".into(), |v| format!("{:.1}%", v * 100.0)),
            r.max_min_requests
                .map_or("inf".into(), |v| format!("{v:.2}")),
            format!("{:.0}", r.route_mean_ns),
            format!("{:.0}", r.route_p99_ns),
            format!("{:.0}", r.decisions_per_s),
        ]);
    }
    t
}

pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "policy,hit_rate,hit_vs_oracle,mean_ttft_ms,p50_ttft_ms,p99_ttft_ms,mean_tpot_ms,output_tokens_per_s,prediction_accuracy,max_min_requests,route_mean_ns,route_p99_ns,decisions_per_s\n",
    );
    for r in rows {
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
        s.push_str(&format!(
            "{},{:.6},{},{:.3},{:.3},{:.3},{:.4},{:.1},{},{},{:.1},{:.1},{:.1}\n",
            r.policy,
            r.hit_rate,
            opt(r.hit_vs_oracle),
            r.mean_ttft_ms,
            r.p50_ttft_ms,
            r.p99_ttft_ms,
            r.mean_tpot_ms,
            r.output_tokens_per_s,
            opt(r.prediction_accuracy),
            opt(r.max_min_requests),
            r.route_mean_ns,
            r.route_p99_ns,
            r.decisions_per_s
        ));
    }
    s
}
