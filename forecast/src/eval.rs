//! Rolling-origin evaluation on a directory of real series (`oms forecast eval --data DIR`).
//!
//! Reads `series.csv` (`series,frequency,season_length,...`) and `observations.csv`
//! (`series,t,value`). Protocol (as in the data's README): horizon 12 for monthly, 8 for
//! quarterly, 28 for daily series (2 seasons otherwise); three origins at n−3h, n−2h and n−h;
//! errors scaled by the in-sample seasonal-naive error of the training part:
//! MASE (MAE / snaive MAE), RMSSE (√(MSE / snaive MSE)), scaled bias (mean(forecast − actual) /
//! snaive MAE) and scaled pinball loss (mean over the 10/50/90% quantiles and steps, / snaive MAE);
//! each averaged over series × origins. A model that fails on a training window is scored with
//! the seasonal-naive forecast and counted in `failures`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use thiserror::Error;

use crate::forecast::{self, Forecast, ModelKind};
use crate::stats::{mean, seasonal_naive_mae, seasonal_naive_mse};

// Casts: series lengths, horizons and fit counts are far below 2^53, so `as f64` on them is exact.

/// Quantile levels scored by the pinball loss.
pub const EVAL_QUANTILES: [f64; 3] = [0.1, 0.5, 0.9];

/// Why the evaluation could not run.
#[derive(Debug, Error)]
pub enum EvalError {
    /// A file could not be read or the report could not be written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File concerned (or `<output>`).
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A CSV line could not be understood.
    #[error("{file}:{line}: {message}")]
    Parse {
        /// File name.
        file: String,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        message: String,
    },
    /// No series long enough for the protocol.
    #[error("no series with enough observations for three origins")]
    NoSeries,
}

/// Scores of one model (or the automatic choice), averaged over series × origins.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelScore {
    /// Model name.
    pub name: String,
    /// Mean MASE.
    pub mase: f64,
    /// Mean RMSSE.
    pub rmsse: f64,
    /// Mean scaled bias (positive = over-forecast).
    pub bias: f64,
    /// Mean scaled pinball loss over [`EVAL_QUANTILES`].
    pub pinball: f64,
    /// Fits (including forecast and quantiles) per second on this machine.
    pub fits_per_second: f64,
    /// Windows on which the model failed and was scored as seasonal naive.
    pub failures: usize,
}

/// Result of [`eval_command`].
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSummary {
    /// Per-model scores in [`ModelKind::ALL`] order.
    pub models: Vec<ModelScore>,
    /// Score of the automatic choice.
    pub auto: ModelScore,
    /// Series evaluated.
    pub series: usize,
    /// Windows (series × origins) evaluated.
    pub windows: usize,
    /// How often the automatic choice picked each model.
    pub auto_choices: BTreeMap<String, usize>,
    /// Per-series scores of the models in [`PER_SERIES_MODELS`] and of the automatic choice.
    pub per_series: Vec<SeriesScore>,
}

/// Models whose per-series scores the report lists (beside the automatic choice).
pub const PER_SERIES_MODELS: [ModelKind; 4] =
    [ModelKind::Ets, ModelKind::Theta, ModelKind::AutoTheta, ModelKind::Combination];

/// Mean scores of one series over its three origins.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesScore {
    /// Series id.
    pub name: String,
    /// Mean MASE of each model of [`PER_SERIES_MODELS`], then of the automatic choice.
    pub mase: Vec<f64>,
    /// Mean RMSSE, same order.
    pub rmsse: Vec<f64>,
}

/// One series of the data set.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSeries {
    /// Series id.
    pub name: String,
    /// Season length.
    pub season: usize,
    /// Horizon.
    pub h: usize,
    /// Observations in time order.
    pub values: Vec<f64>,
}

/// Splits one CSV line, honouring double quotes (enough for these files).
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

fn read(path: &Path) -> Result<String, EvalError> {
    std::fs::read_to_string(path).map_err(|source| EvalError::Io { path: path.display().to_string(), source })
}

/// Horizon of the protocol for a frequency name and season length.
pub fn horizon_for(frequency: &str, season: usize) -> usize {
    match frequency {
        "monthly" => 12,
        "quarterly" => 8,
        "daily" => 28,
        _ => (2 * season).max(4),
    }
}

/// Loads `series.csv` and `observations.csv` from `data_dir`.
pub fn load_series(data_dir: &Path) -> Result<Vec<EvalSeries>, EvalError> {
    let parse_err =
        |file: &str, line: usize, message: String| EvalError::Parse { file: file.to_string(), line, message };
    let meta = read(&data_dir.join("series.csv"))?;
    let mut series: Vec<EvalSeries> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (i, line) in meta.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let f = split_csv(line);
        if f.len() < 3 {
            return Err(parse_err("series.csv", i + 1, "expected at least 3 fields".into()));
        }
        let season: usize =
            f[2].trim().parse().map_err(|e| parse_err("series.csv", i + 1, format!("season_length: {e}")))?;
        index.insert(f[0].clone(), series.len());
        series.push(EvalSeries {
            name: f[0].clone(),
            season: season.max(1),
            h: horizon_for(f[1].trim(), season),
            values: Vec::new(),
        });
    }
    let obs = read(&data_dir.join("observations.csv"))?;
    let mut points: Vec<Vec<(u64, f64)>> = vec![Vec::new(); series.len()];
    for (i, line) in obs.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let f = split_csv(line);
        if f.len() < 3 {
            return Err(parse_err("observations.csv", i + 1, "expected 3 fields".into()));
        }
        let Some(&s) = index.get(&f[0]) else {
            return Err(parse_err("observations.csv", i + 1, format!("unknown series {}", f[0])));
        };
        let t: u64 = f[1].trim().parse().map_err(|e| parse_err("observations.csv", i + 1, format!("t: {e}")))?;
        let v: f64 = f[2].trim().parse().map_err(|e| parse_err("observations.csv", i + 1, format!("value: {e}")))?;
        if !v.is_finite() {
            return Err(parse_err("observations.csv", i + 1, "non-finite value".into()));
        }
        points[s].push((t, v));
    }
    for (s, mut p) in series.iter_mut().zip(points) {
        p.sort_by_key(|(t, _)| *t);
        s.values = p.into_iter().map(|(_, v)| v).collect();
    }
    Ok(series)
}

#[derive(Default)]
struct Acc {
    mase: Vec<f64>,
    rmsse: Vec<f64>,
    bias: Vec<f64>,
    pinball: Vec<f64>,
    fits: usize,
    seconds: f64,
    failures: usize,
}

impl Acc {
    fn score(&self, name: &str) -> ModelScore {
        ModelScore {
            name: name.to_string(),
            mase: mean(&self.mase),
            rmsse: mean(&self.rmsse),
            bias: mean(&self.bias),
            pinball: mean(&self.pinball),
            fits_per_second: if self.seconds > 0.0 { self.fits as f64 / self.seconds } else { 0.0 },
            failures: self.failures,
        }
    }

    fn add(&mut self, train: &[f64], test: &[f64], m: usize, fc: &Forecast) {
        let scale_mae = positive_or(seasonal_naive_mae(train, m), mean(train).abs().max(1e-9));
        let scale_mse = positive_or(seasonal_naive_mse(train, m), scale_mae * scale_mae);
        let h = test.len() as f64;
        let err: Vec<f64> = fc.mean.iter().zip(test).map(|(f, a)| f - a).collect();
        self.mase.push(err.iter().map(|e| e.abs()).sum::<f64>() / h / scale_mae);
        self.rmsse.push((err.iter().map(|e| e * e).sum::<f64>() / h / scale_mse).sqrt());
        self.bias.push(err.iter().sum::<f64>() / h / scale_mae);
        let mut pin = 0.0;
        let mut count = 0.0;
        for q in &fc.quantiles {
            for (v, a) in q.values.iter().zip(test) {
                pin += if *a >= *v { q.level * (a - v) } else { (1.0 - q.level) * (v - a) };
                count += 1.0;
            }
        }
        self.pinball.push(if count > 0.0 { pin / count / scale_mae } else { 0.0 });
    }
}

fn positive_or(v: f64, alt: f64) -> f64 {
    if v > 0.0 && v.is_finite() { v } else { alt }
}

/// Evaluates every model and the automatic choice on the data in `data_dir` and writes a
/// report to `out`; the last line is the automatic choice's mean MASE.
pub fn eval_command(data_dir: &Path, out: &mut dyn Write) -> Result<EvalSummary, EvalError> {
    let series = load_series(data_dir)?;
    let usable: Vec<&EvalSeries> = series.iter().filter(|s| s.values.len() > 3 * s.h + 2).collect();
    if usable.is_empty() {
        return Err(EvalError::NoSeries);
    }
    let io = |source| EvalError::Io { path: "<output>".into(), source };
    let mut accs: Vec<Acc> = ModelKind::ALL.iter().map(|_| Acc::default()).collect();
    let mut auto_acc = Acc::default();
    let mut choices: BTreeMap<String, usize> = BTreeMap::new();
    let mut windows = 0;
    for s in &usable {
        let n = s.values.len();
        for k in (1..=3).rev() {
            let origin = n - k * s.h;
            let train = &s.values[..origin];
            let test = &s.values[origin..origin + s.h];
            windows += 1;
            let fallback = || forecast::fit(ModelKind::SeasonalNaive, train, s.season, s.h, &EVAL_QUANTILES);
            for (kind, acc) in ModelKind::ALL.iter().zip(accs.iter_mut()) {
                let start = Instant::now();
                let result = forecast::fit(*kind, train, s.season, s.h, &EVAL_QUANTILES);
                acc.seconds += start.elapsed().as_secs_f64();
                acc.fits += 1;
                match result.or_else(|_| {
                    acc.failures += 1;
                    fallback()
                }) {
                    Ok(fc) => acc.add(train, test, s.season, &fc),
                    Err(_) => acc.failures += 1,
                }
            }
            let start = Instant::now();
            let result = forecast::auto(train, s.season, s.h, &EVAL_QUANTILES);
            auto_acc.seconds += start.elapsed().as_secs_f64();
            auto_acc.fits += 1;
            match result.or_else(|_| {
                auto_acc.failures += 1;
                fallback()
            }) {
                Ok(fc) => {
                    *choices.entry(fc.model.name().to_string()).or_default() += 1;
                    auto_acc.add(train, test, s.season, &fc);
                }
                Err(_) => auto_acc.failures += 1,
            }
        }
    }
    let models: Vec<ModelScore> = ModelKind::ALL.iter().zip(&accs).map(|(k, a)| a.score(k.name())).collect();
    let auto = auto_acc.score("Auto");
    writeln!(out, "forecast eval: {} series, {} windows (origins n-3h, n-2h, n-h)", usable.len(), windows)
        .map_err(io)?;
    writeln!(
        out,
        "{:<14} {:>8} {:>8} {:>8} {:>8} {:>10} {:>5}",
        "model", "MASE", "RMSSE", "bias", "pinball", "fits/s", "fail"
    )
    .map_err(io)?;
    for sc in models.iter().chain(std::iter::once(&auto)) {
        writeln!(
            out,
            "{:<14} {:>8.4} {:>8.4} {:>8.4} {:>8.4} {:>10.1} {:>5}",
            sc.name, sc.mase, sc.rmsse, sc.bias, sc.pinball, sc.fits_per_second, sc.failures
        )
        .map_err(io)?;
    }
    let picks: Vec<String> = choices.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(out, "auto choices: {}", picks.join(" ")).map_err(io)?;
    let per_series = per_series_scores(&usable, &accs, &auto_acc);
    write_per_series(out, &per_series).map_err(io)?;
    writeln!(out, "auto mean MASE: {:.4}", auto.mase).map_err(io)?;
    Ok(EvalSummary { models, auto, series: usable.len(), windows, auto_choices: choices, per_series })
}

/// Per-series means: every usable series contributes exactly three consecutive windows to each `Acc`.
fn per_series_scores(usable: &[&EvalSeries], accs: &[Acc], auto_acc: &Acc) -> Vec<SeriesScore> {
    let picked: Vec<&Acc> = PER_SERIES_MODELS
        .iter()
        .filter_map(|k| ModelKind::ALL.iter().position(|a| a == k).and_then(|i| accs.get(i)))
        .chain(std::iter::once(auto_acc))
        .collect();
    let window_mean = |v: &[f64], i: usize| mean(v.get(3 * i..3 * i + 3).unwrap_or(&[]));
    usable
        .iter()
        .enumerate()
        .map(|(i, s)| SeriesScore {
            name: s.name.clone(),
            mase: picked.iter().map(|a| window_mean(&a.mase, i)).collect(),
            rmsse: picked.iter().map(|a| window_mean(&a.rmsse, i)).collect(),
        })
        .collect()
}

fn write_per_series(out: &mut dyn Write, rows: &[SeriesScore]) -> std::io::Result<()> {
    let names: Vec<&str> = PER_SERIES_MODELS.iter().map(|k| k.name()).chain(std::iter::once("Auto")).collect();
    writeln!(out, "per series (mean over 3 origins): MASE of {} | RMSSE of the same", names.join(", "))?;
    for r in rows {
        let mase: Vec<String> = r.mase.iter().map(|v| format!("{v:>7.4}")).collect();
        let rmsse: Vec<String> = r.rmsse.iter().map(|v| format!("{v:>7.4}")).collect();
        writeln!(out, "  {:<48} {} | {}", r.name, mase.join(" "), rmsse.join(" "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_split_handles_quotes() {
        assert_eq!(split_csv(r#"a,"b, c",d"#), vec!["a", "b, c", "d"]);
    }

    #[test]
    fn eval_runs_on_generated_files() {
        let dir = std::env::temp_dir().join(format!("oms-forecast-eval-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("series.csv"),
            "series,frequency,season_length,source,description,length\ns1,quarterly,4,x,\"a, b\",40\n",
        )
        .unwrap();
        let mut obs = String::from("series,t,value\n");
        for t in 0..40 {
            obs.push_str(&format!("s1,{t},{}\n", 50.0 + t as f64 + [5.0, -2.0, 0.0, -3.0][t % 4]));
        }
        std::fs::write(dir.join("observations.csv"), obs).unwrap();
        let mut out = Vec::new();
        let summary = eval_command(&dir, &mut out).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let text = String::from_utf8(out).unwrap();
        let last = text.lines().last().unwrap();
        assert!(last.starts_with("auto mean MASE:"), "{text}");
        assert_eq!(summary.windows, 3);
        assert!(summary.auto.mase.is_finite() && summary.auto.mase < 1.0, "{text}");
        // One series: its per-series means are the overall means, and the report lists it.
        assert_eq!(summary.per_series.len(), 1);
        let row = &summary.per_series[0];
        assert_eq!(row.mase.len(), PER_SERIES_MODELS.len() + 1);
        assert!((row.mase[PER_SERIES_MODELS.len()] - summary.auto.mase).abs() < 1e-12, "{row:?}");
        assert!((row.rmsse[PER_SERIES_MODELS.len()] - summary.auto.rmsse).abs() < 1e-12, "{row:?}");
        let combination = summary.models.iter().find(|m| m.name == "Combination").unwrap();
        assert!((row.mase[3] - combination.mase).abs() < 1e-12, "{row:?}");
        assert!(text.lines().any(|l| l.trim_start().starts_with("s1 ")), "{text}");
    }
}
