"""The eval stage: the suite (suite.py: greedy pass@1, sampled pass@k / maj@k, format mix), its
settings (config.py), the folder it writes (store.py) and the estimators (passk.py)."""
