"""The reproduction of Hataya & Kawahara (2024) on top of the engine: the paper's runs per
profile as data (`configs`, `experiments`), the cached results and what the book measures
on them (`results`, `quality`, `spectra`, `fidelity`, `tables`), figures and widgets
(`plotting`, `widgets`), the benchmark, dry runs, doctor, shards and the GPU check, and the
command line (`cli`, run as `python -m glocal_core`).

The engine, `glocal_core`, never imports this package (tests/test_layers.py).
"""
