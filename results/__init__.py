"""Plain data shared by the sweeps and the analysis: a results folder read into trial records
(`results.folder`), the records as tables (`results.table`) and their ranking (`results.ranking`).
It imports nothing above `genmodels`, so `sweeps/` and `analysis/` both build on it."""
