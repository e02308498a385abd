//! The simulator as a user runs it: exit codes, messages, outputs.

use std::process::Command;

fn sim(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_router-sim"))
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_default_run_reports_every_policy() {
    let (code, stdout, _) = sim(&["--requests", "600"]);
    assert_eq!(code, 0);
    for p in [
        "cache-aware",
        "cache-aware-cost",
        "cache-aware-ttft",
        "precise",
        "hybrid",
        "round-robin",
        "random",
        "power-of-two",
        "least-load",
        "prefix-hash",
        "oracle",
    ] {
        assert!(stdout.contains(p), "missing {p} in:\n{stdout}");
    }
}

#[test]
fn bad_input_exits_2_naming_the_flag_or_line_and_writes_nothing() {
    let dir = std::env::temp_dir().join(format!("router-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("bad.jsonl");
    std::fs::write(
        &trace,
        "{\"timestamp\": 1, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [1]}\n{oops\n",
    )
    .unwrap();
    let json = dir.join("out.json");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--workers", "0"], "--workers"),
        (vec!["--policy", "fastest"], "unknown policy"),
        (vec!["--cache-threshold", "1.5"], "--cache-threshold"),
        (vec!["--cache-threshold", "NaN"], "--cache-threshold"),
        (vec!["--requests", "0"], "--requests"),
        (
            vec!["--decode-ms-per-token", "inf"],
            "--decode-ms-per-token",
        ),
        (vec!["--prefill-us-per-token=-1"], "--prefill-us-per-token"),
        (
            vec!["--prefill-us-per-token", "NaN"],
            "--prefill-us-per-token",
        ),
        (vec!["--speedup", "inf"], "--speedup"),
        (
            vec!["--balance-rel-threshold", "inf"],
            "--balance-rel-threshold",
        ),
        (vec!["--cache-tokens", "0"], "--cache-tokens"),
        (vec!["--chars-per-block", "0"], "--chars-per-block"),
        (vec!["--event-delay-ms", "5,-1"], "--event-delay-ms"),
        (vec!["--event-delay-ms", "NaN"], "--event-delay-ms"),
        (vec!["--replicas", "4,0"], "--replicas"),
        (vec!["--sync", "gossip"], "--sync"),
        (vec!["--sync-delay-ms=-1"], "--sync-delay-ms"),
        (
            vec!["--cache-pressure", "--cache-tokens", "4096"],
            "--cache-tokens",
        ),
        (vec!["--policy", "cache-aware,,oracle"], "--policy"),
        (
            vec![
                "--trace",
                trace.to_str().unwrap(),
                "--json",
                json.to_str().unwrap(),
            ],
            "line 2",
        ),
    ];
    for (args, needle) in cases {
        let (code, _, stderr) = sim(&args);
        assert_eq!(code, 2, "{args:?}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    assert!(!json.exists(), "nothing half-written");
}

#[test]
fn json_and_csv_outputs_hold_one_row_per_policy() {
    let dir = std::env::temp_dir().join(format!("router-sim-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, csv, svg) = (dir.join("r.json"), dir.join("r.csv"), dir.join("r.svg"));
    let (code, _, _) = sim(&[
        "--requests",
        "300",
        "--policy",
        "cache-aware,oracle",
        "--json",
        json.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 2);
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 3);
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.contains("<svg") && plot.contains("cache-aware") && plot.contains("oracle"));
}

/// Policies replayed in parallel report exactly what a serial replay does, in the same order
/// (all but the router's own timing, which is measured, not simulated).
#[test]
fn parallel_replays_report_what_a_serial_one_does() {
    let dir = std::env::temp_dir().join(format!("router-sim-jobs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rows = |jobs: &str| {
        let out = dir.join(format!("jobs-{jobs}.json"));
        let (code, _, stderr) = sim(&[
            "--requests",
            "400",
            "--jobs",
            jobs,
            "--json",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{stderr}");
        let mut rows: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        for row in rows.as_array_mut().unwrap() {
            let row = row.as_object_mut().unwrap();
            for timing in ["route_mean_ns", "route_p99_ns", "decisions_per_s"] {
                assert!(row.remove(timing).is_some(), "no {timing} in {row:?}");
            }
        }
        rows
    };
    let serial = rows("1");
    assert_eq!(serial.as_array().unwrap().len(), 11, "every policy");
    assert_eq!(rows("3"), serial);
}
