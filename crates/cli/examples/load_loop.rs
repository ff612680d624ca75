//! A plain reserve+commit load loop against a running server, for quick throughput and latency
//! figures on one machine. (The benchmark proper, with scenarios and a Redis baseline, is
//! `tollgate bench`, a later piece of work.)
//!
//! ```sh
//! cargo run --release --example load_loop -- http://127.0.0.1:7070 tg_sk_test_... 32 10
//! ```
//! Arguments: base URL, a test secret key, concurrent clients, seconds. The base URL may be a
//! comma-separated list of nodes sharing one database; client i then talks to node i mod N.
//! It applies a plan document with one generous limit, so run it against a test environment
//! you can spare.

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, urls, key, clients, seconds] = args.as_slice() else {
        anyhow::bail!("usage: load_loop URL[,URL...] SECRET_KEY CLIENTS SECONDS");
    };
    let urls: Vec<String> = urls.split(',').map(str::to_string).collect();
    let url = &urls[0];
    let clients: usize = clients.parse()?;
    let run_for = Duration::from_secs(seconds.parse()?);
    let http = reqwest::Client::new();
    let auth = format!("Bearer {key}");
    let plans = serde_json::json!({
        "defaultPlan": "load",
        "plans": [{"id": "load", "limits": [{"id": "load_total", "quota": 9_000_000_000_000u64,
            "window": {"type": "lifetime"}, "match": [{"event": "*"}]}]}]
    });
    let status = http
        .put(format!("{url}/v1/plans"))
        .header("authorization", &auth)
        .json(&plans)
        .send()
        .await?
        .status();
    anyhow::ensure!(
        status.is_success(),
        "applying the plan document failed: {status}"
    );

    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (http, auth) = (http.clone(), auth.clone());
        let url = urls[c % urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while started.elapsed() < run_for {
                let user = format!("load_{c}_{}", i % 100);
                i += 1;
                let t = Instant::now();
                let r: serde_json::Value = http
                    .post(format!("{url}/v1/reserve"))
                    .header("authorization", &auth)
                    .json(&serde_json::json!({"userId": user, "event": "image.render"}))
                    .send()
                    .await?
                    .json()
                    .await?;
                let reserve = t.elapsed();
                let id = r["reservationId"]
                    .as_str()
                    .ok_or_else(|| anyhow::anyhow!("reserve was not admitted: {r}"))?;
                let t2 = Instant::now();
                let status = http
                    .post(format!("{url}/v1/reservations/{id}/commit"))
                    .header("authorization", &auth)
                    .json(&serde_json::json!({}))
                    .send()
                    .await?
                    .status();
                anyhow::ensure!(status.is_success(), "commit failed: {status}");
                latencies.push((reserve, t2.elapsed()));
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let pct = |mut v: Vec<Duration>, p: f64| {
        v.sort();
        v.get(((v.len() as f64 - 1.0) * p) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let reserves: Vec<Duration> = all.iter().map(|(r, _)| *r).collect();
    let commits: Vec<Duration> = all.iter().map(|(_, c)| *c).collect();
    println!(
        "{} reserve+commit pairs in {elapsed:.1} s with {clients} clients on {} node(s): {:.0} pairs/s",
        all.len(),
        urls.len(),
        all.len() as f64 / elapsed
    );
    for (name, v) in [("reserve", reserves), ("commit", commits)] {
        println!(
            "{name:8} p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms",
            pct(v.clone(), 0.50),
            pct(v.clone(), 0.90),
            pct(v, 0.99)
        );
    }
    Ok(())
}
