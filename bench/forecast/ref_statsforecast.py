"""Reference figures from statsforecast for bench/forecast (run by run.sh after
`pip install statsforecast`; this script installs nothing itself).

1. Mean MASE / RMSSE of AutoETS, AutoTheta and SeasonalNaive on the real series in DATA_DIR with
   the protocol of its README (h = 12 monthly, 8 quarterly, 28 daily; origins n-3h, n-2h, n-h;
   scale = in-sample seasonal-naive MAE of the training part).
2. Single-core throughput (n_jobs=1, series/s, fit + 28-day point forecast) of CrostonClassic,
   CrostonSBA, TSB(0.1, 0.1) and ADIDA on the synthetic intermittent series exported by
   `forecast_bench export` (CSV unique_id,ds,y). Numba compilation is excluded by a warm-up run.

Usage: python ref_statsforecast.py DATA_DIR INTERMITTENT_CSV
"""

import os
import sys
import time
import warnings

os.environ.setdefault("NIXTLA_ID_AS_COL", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from statsforecast import StatsForecast  # noqa: E402
from statsforecast.models import (  # noqa: E402
    ADIDA,
    TSB,
    AutoETS,
    AutoTheta,
    CrostonClassic,
    CrostonSBA,
    SeasonalNaive,
)

HORIZON = {"monthly": 12, "quarterly": 8, "daily": 28}


def snaive_scales(train, m):
    m = m if len(train) > m else 1
    d = train[m:] - train[:-m]
    return np.mean(np.abs(d)), np.mean(d * d)


def evaluate(data_dir):
    meta = pd.read_csv(os.path.join(data_dir, "series.csv"))
    obs = pd.read_csv(os.path.join(data_dir, "observations.csv")).sort_values(["series", "t"])
    names = ["AutoETS", "AutoTheta", "SeasonalNaive"]
    scores = {k: {"mase": [], "rmsse": []} for k in names}
    seconds = {k: 0.0 for k in names}
    for _, row in meta.iterrows():
        y = obs.loc[obs.series == row.series, "value"].to_numpy(dtype=float)
        m = int(row.season_length)
        h = HORIZON.get(row.frequency, 2 * m)
        n = len(y)
        for k in (3, 2, 1):
            origin = n - k * h
            train, test = y[:origin], y[origin : origin + h]
            df = pd.DataFrame({"unique_id": "s", "ds": np.arange(origin), "y": train})
            mae, mse = snaive_scales(train, m)
            for name, model in (
                ("AutoETS", AutoETS(season_length=m)),
                ("AutoTheta", AutoTheta(season_length=m)),
                ("SeasonalNaive", SeasonalNaive(season_length=m)),
            ):
                start = time.perf_counter()
                fc = StatsForecast(models=[model], freq=1, n_jobs=1).forecast(df=df, h=h)
                seconds[name] += time.perf_counter() - start
                f = fc[name].to_numpy()
                scores[name]["mase"].append(np.mean(np.abs(f - test)) / mae)
                scores[name]["rmsse"].append(np.sqrt(np.mean((f - test) ** 2) / mse))
    windows = len(scores["AutoETS"]["mase"])
    print(f"statsforecast eval: {len(meta)} series, {windows} windows")
    for name in names:
        print(
            f"{name:<14} MASE {np.mean(scores[name]['mase']):.4f}  RMSSE {np.mean(scores[name]['rmsse']):.4f}"
            f"  fits/s {windows / seconds[name]:.1f}"
        )


def throughput(csv_path):
    df = pd.read_csv(csv_path)
    n_series = df.unique_id.nunique()
    warm = df[df.unique_id.isin(df.unique_id.unique()[:3])]
    print(f"statsforecast throughput on one core (n_jobs=1): {n_series} series, fit + 28-day forecast")
    for name, make in (
        ("CrostonClassic", CrostonClassic),
        ("CrostonSBA", CrostonSBA),
        ("TSB", lambda: TSB(alpha_d=0.1, alpha_p=0.1)),
        ("ADIDA", ADIDA),
    ):
        StatsForecast(models=[make()], freq=1, n_jobs=1).forecast(df=warm, h=28)  # numba warm-up
        start = time.perf_counter()
        StatsForecast(models=[make()], freq=1, n_jobs=1).forecast(df=df, h=28)
        secs = time.perf_counter() - start
        print(f"{name:<14} {n_series / secs:10.0f} series/s  ({secs:.3f} s)")


if __name__ == "__main__":
    data_dir = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/forecast"
    csv_path = sys.argv[2] if len(sys.argv) > 2 else "/tmp/oms_intermittent.csv"
    import statsforecast

    print(f"statsforecast {statsforecast.__version__}, numpy {np.__version__}, pandas {pd.__version__}")
    evaluate(data_dir)
    throughput(csv_path)
