//! `state-pack bench`: timing the demo loop naive vs state-pack (and a peer), and a cold
//! state restored from its KV blob vs prefilled again; the reports as tables.

use super::*;

pub(crate) async fn bench_cmd(
    model: Option<&Path>,
    cache: &Path,
    spec: EngineSpec,
    peer: Option<&bench::Peer>,
    plan: bench::BenchPlan,
) -> Result<bench::BenchReport> {
    let engine = spec.kind;
    let (steps, runs) = (plan.steps, plan.runs);
    let reuse = load(model, cache, spec).await?;
    let naive = load(model, cache, spec.hot_states(0)).await?;
    let arms = 2 + usize::from(peer.is_some());
    let bar = Progress::new(
        arms * steps * runs,
        "steps",
        "{bar:40} {pos}/{len} steps  {msg}  [{elapsed_precise}]",
    );
    let plan = bench::BenchPlan {
        kv_blobs: plan.kv_blobs && !crate::kv_blobs_off(),
        ..plan
    };
    let report = bench::run(reuse, naive, peer, plan, |arm, step| {
        bar.set_message(format!("{engine} {} step {step}", arm.name()));
        bar.inc();
    })
    .await?;
    bar.finish();
    Ok(report)
}

pub(crate) fn print_bench(report: &bench::BenchReport) {
    let of = |a: Arm| report.arm_runs.iter().filter(move |r| r.arm == a);
    println!(
        "{} on {}, {} steps x {} run(s), both arms in this process",
        match report.workload {
            bench::Workload::Demo => "demo",
            bench::Workload::Agent => "agent (legal research, real tool calls)",
        },
        report.engine,
        report.steps,
        report.runs
    );
    println!("arm           prefilled  reused  wall (s)  per step (ms)");
    for arm in [Arm::Naive, Arm::StatePack, Arm::Peer] {
        for r in of(arm) {
            println!(
                "{:<12} {:>10}  {:>6}  {:>8.1}  {:>13.0}",
                arm.name(),
                r.totals.prefilled,
                r.totals.reused,
                r.totals.wall.as_secs_f64(),
                r.mean_step_ms()
            );
        }
    }
    let progress: Vec<_> = of(Arm::StatePack)
        .filter_map(|r| r.progress.as_ref())
        .collect();
    if !progress.is_empty() {
        println!();
        println!(
            "task progress (state-pack arm, per run): calls  distinct  repeats  answered  stop"
        );
        for p in progress {
            println!(
                "{:>44}  {:>8}  {:>7}  {:>8}  {}",
                p.calls,
                p.distinct_calls,
                p.repeats,
                if p.answered { "yes" } else { "no" },
                p.stop
            );
        }
    }
    println!();
    println!(
        "speedup (median of naive/state-pack wall per run): {:.1}x",
        report.speedup
    );
    println!(
        "tokens prefilled saved: {:.1}%",
        100.0 * report.token_savings
    );
    println!(
        "per step: naive {:.0} ms, state-pack {:.0} ms (medians)",
        report.naive_step_ms, report.statepack_step_ms
    );
    println!(
        "state-pack overhead (hashing, SQLite): {:.2}% of its wall time",
        100.0 * report.overhead_fraction
    );
    println!("where a step went (ms, medians): prefill  decode  restore  save  overhead  other");
    let mut splits = vec![
        ("naive", report.naive_split_ms),
        ("state-pack", report.statepack_split_ms),
    ];
    if let Some(p) = &report.peer {
        splits.push(("llama-server", p.split_ms));
    }
    for (name, s) in splits {
        println!(
            "{name:>31}  {:>7.2}  {:>6.2}  {:>7.2}  {:>4.2}  {:>8.2}  {:>5.2}",
            s.prefill, s.decode, s.restore, s.save, s.overhead, s.other
        );
    }
    println!(
        "outputs identical in both arms: {}",
        if report.outputs_identical {
            "yes"
        } else {
            "NO"
        }
    );
    if let Some(p) = &report.peer {
        println!(
            "llama-server at {}: {:.0} ms per step (median); state-pack/llama-server per step, \
             same runs: {:.2}x (median); same outputs as state-pack: {}",
            p.url,
            p.step_ms,
            p.statepack_over_peer,
            if p.outputs_match_statepack {
                "yes"
            } else {
                "no"
            }
        );
    }
}

pub(crate) async fn restore_cmd(
    model: Option<&Path>,
    cache: &Path,
    spec: EngineSpec,
    tokens: usize,
    runs: usize,
    json: bool,
) -> Result<()> {
    if spec.kind != EngineKind::LlamaCpp {
        anyhow::bail!(
            "--workload restore needs --engine llamacpp: mistral.rs cannot save KV states, so a cold state is always prefilled again"
        );
    }
    let (path, spec) = crate::resolve(model, cache, spec)?;
    let bar = Progress::new(
        runs,
        "runs",
        "{bar:40} {pos}/{len} runs  [{elapsed_precise}]",
    );
    let report = bench::restore_vs_prefill(
        || load_engine(&path, spec),
        crate::kv_at(),
        tokens,
        runs,
        |_| bar.inc(),
    )
    .await?;
    bar.finish();
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let med = |v: &[f64]| bench::median(v.to_vec());
    println!(
        "cold {}-token state on {} ({} runs, a fresh engine for each arm of each run)",
        report.state_tokens, report.engine, report.runs
    );
    println!(
        "KV {:.1} MB, blob {:.1} MB (header and raw body, in {})",
        report.kv_bytes as f64 / 1e6,
        report.blob_bytes as f64 / 1e6,
        if report.blob_tier == "redis" {
            "Redis"
        } else {
            "a directory"
        }
    );
    println!(
        "restore from blob   {:>8.1} ms (median; read, check, load)",
        med(&report.restore_ms)
    );
    println!(
        "prefill again       {:>8.1} ms (median)",
        med(&report.reprefill_ms)
    );
    println!(
        "speedup             {:>8.1}x (median of per-run ratios)",
        report.speedup
    );
    println!(
        "whole infer (delta + 8 tokens): {:.0} ms restored vs {:.0} ms re-prefilled ({:.1}x)",
        med(&report.restored_infer_ms),
        med(&report.reprefilled_infer_ms),
        report.infer_speedup
    );
    println!(
        "outputs identical: {}",
        if report.outputs_identical {
            "yes"
        } else {
            "NO"
        }
    );
    Ok(())
}

/// This process's memory: (resident now, peak resident) in bytes, from `/proc/self/status`
/// (`None` where that file does not exist).
pub(crate) fn memory_usage() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// `bench --workload decode`: each engine's greedy decode rate, one after the other.
pub(crate) async fn decode_cmd(
    model: Option<&Path>,
    cache: &Path,
    spec: EngineSpec,
    engines: &[EngineKind],
    tokens: usize,
    runs: usize,
    json: bool,
) -> Result<()> {
    let mut reports = Vec::new();
    for &kind in engines {
        let engine = load(model, cache, EngineSpec { kind, ..spec }).await?;
        let bar = Progress::new(runs, "runs", "{bar:40} {pos}/{len} runs  {msg}");
        bar.set_message(format!("{kind} decode"));
        let report = bench::decode_rate(engine.as_ref(), tokens, runs, |_| bar.inc()).await?;
        bar.finish();
        drop(engine);
        if !json {
            println!(
                "{:<10} {:>7.2} ms/token  {:>7.1} tokens/s  (median of {} runs; generated {:?} of {} each; prompt {} tokens)",
                report.engine,
                report.ms_per_token,
                report.tokens_per_s,
                runs,
                report.generated,
                tokens,
                report.prompt_tokens
            );
        }
        reports.push(report);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(())
}
