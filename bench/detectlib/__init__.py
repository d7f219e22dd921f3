"""Scoring and data for bench/detect_bench.py: NAB-style anomaly scoring (nab), TCPD change-point
F1 and covering (tcpd), generated labelled series (series) and River's annotated real change-point
series (changepoints)."""
