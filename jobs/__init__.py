"""The jobs shipped with crowdml, installed as the `crowdml_jobs` package. Each file is one job,
found by workers by the keccak256 of its source (crowdml_compute/jobs.py); this file is none."""
