//! Benchmark driver for `bench/forecast/run.sh`.
//!
//! * `forecast_bench eval DIR` — rolling-origin evaluation on real series (`eval_command`).
//! * `forecast_bench panel SEED N` — synthetic panel report (`panel_command`).
//! * `forecast_bench throughput SEED N` — single-thread fits/s of the intermittent models
//!   (fit + 28-day forecast + 3 quantiles) on the intermittent/lumpy series of the panel.
//! * `forecast_bench inventory SEED N` — the inventory simulation of `panel` alone, on the
//!   intermittent and lumpy series among the first N of the panel (quick check of their safety stock).
//! * `forecast_bench export SEED N FILE` — writes those series as `unique_id,ds,y` CSV for the
//!   statsforecast reference script.
use std::io::Write;
use std::time::Instant;

use oms_forecast::forecast::{ModelKind, fit};
use oms_forecast::synthetic::{
    InventoryConfig, InventoryOutcome, PANEL_DAYS, Pattern, simulate_inventory, synthetic_panel,
};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn intermittent(seed: u64, n: usize) -> Vec<Vec<f64>> {
    synthetic_panel(seed, n, PANEL_DAYS).into_iter().filter(|s| s.pattern.is_intermittent()).map(|s| s.values).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mut out = std::io::stdout();
    match args.get(1).map(String::as_str) {
        Some("eval") => {
            let dir = args.get(2).map_or("../shared/data/forecast", String::as_str);
            oms_forecast::eval_command(std::path::Path::new(dir), &mut out)?;
        }
        Some("panel") => {
            let start = Instant::now();
            oms_forecast::panel_command(&mut out, arg(&args, 2, 42), arg(&args, 3, 3000))?;
            writeln!(out, "panel wall time {:.1} s", start.elapsed().as_secs_f64())?;
        }
        Some("throughput") => {
            let series = intermittent(arg(&args, 2, 42), arg(&args, 3, 3000));
            let quantiles = [0.1, 0.5, 0.9];
            writeln!(
                out,
                "throughput on one thread: {} intermittent/lumpy series x {PANEL_DAYS} days, fit + 28-day forecast + 3 quantiles",
                series.len()
            )?;
            for kind in [ModelKind::Croston, ModelKind::Sba, ModelKind::Tsb, ModelKind::Adida] {
                let start = Instant::now();
                let mut checksum = 0.0;
                for y in &series {
                    let f = fit(kind, y, 7, 28, &quantiles)?;
                    checksum += f.mean[0];
                }
                let secs = start.elapsed().as_secs_f64();
                writeln!(
                    out,
                    "{:<8} {:>10.0} series/s  ({:.3} s, checksum {:.3})",
                    kind.name(),
                    series.len() as f64 / secs,
                    secs,
                    checksum
                )?;
            }
            let start = Instant::now();
            for y in &series {
                oms_forecast::forecast::auto(y, 7, 28, &quantiles)?;
            }
            let secs = start.elapsed().as_secs_f64();
            writeln!(out, "{:<8} {:>10.0} series/s  ({:.3} s)", "Auto", series.len() as f64 / secs, secs)?;
        }
        Some("inventory") => {
            let start = Instant::now();
            let panel: Vec<_> = synthetic_panel(arg(&args, 2, 42), arg(&args, 3, 600), PANEL_DAYS)
                .into_iter()
                .filter(|s| s.pattern.is_intermittent())
                .collect();
            let config = InventoryConfig::default();
            let results: Vec<(Pattern, InventoryOutcome)> = std::thread::scope(|scope| {
                let handles: Vec<_> = panel
                    .chunks(panel.len().div_ceil(2).max(1))
                    .map(|part| {
                        let config = &config;
                        scope.spawn(move || {
                            part.iter().map(|s| (s.pattern, simulate_inventory(&s.values, config))).collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles.into_iter().filter_map(|h| h.join().ok()).flatten().collect()
            });
            for pattern in [Pattern::Intermittent, Pattern::Lumpy] {
                let mut o = InventoryOutcome::default();
                results.iter().filter(|(p, _)| *p == pattern).for_each(|(_, x)| o.merge(x));
                writeln!(
                    out,
                    "inventory {:<12} CSL {:.4}  fill rate {:.4}  avg on hand {:.2}  cycles {}",
                    pattern.name(),
                    o.cycle_service_level(),
                    o.fill_rate(),
                    o.average_on_hand(),
                    o.cycles
                )?;
            }
            writeln!(out, "inventory wall time {:.1} s", start.elapsed().as_secs_f64())?;
        }
        Some("export") => {
            let series = intermittent(arg(&args, 2, 42), arg(&args, 3, 3000));
            let path = args.get(4).map_or("/tmp/oms_intermittent.csv", String::as_str);
            let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
            writeln!(w, "unique_id,ds,y")?;
            for (i, y) in series.iter().enumerate() {
                for (t, v) in y.iter().enumerate() {
                    writeln!(w, "s{i},{t},{v}")?;
                }
            }
            writeln!(out, "wrote {} series to {path}", series.len())?;
        }
        _ => {
            eprintln!(
                "usage: forecast_bench eval DIR | panel SEED N | throughput SEED N | inventory SEED N | export SEED N FILE"
            );
            std::process::exit(2);
        }
    }
    Ok(())
}
