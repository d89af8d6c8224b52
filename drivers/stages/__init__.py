"""The stages of one iteration of Algorithm 1 (Kessler et al. 2025, arXiv 2512.00884), one file each,
in the order the runner (drivers/runner.py) runs them: predict, select (score + select, with the
signals the strategy needs), generate, fidelity, train, evaluate, then gate (`run`: the calibration
gate; `forecast`: the scaling-law forecast). Each exposes `run(ctx, inputs) -> StageResult` and
`TABLES`, the names of the tables it returns (written to, and on resume read back from,
iter_NN/<name>.parquet).
"""
