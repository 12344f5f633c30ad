"""Tests of the benchmark scripts' pure parts (the benchmarks themselves are not run by pytest)."""
