"""The study stage: a whole study's config (config.py), the pipeline that runs it into one run folder
(pipeline.py), and grids of studies (sweep.py)."""
