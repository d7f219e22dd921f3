"""The benchmark scenarios; ``bench/run.py`` runs them in order and writes one results file."""
