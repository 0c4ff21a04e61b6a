"""Support for tests, benchmarks and demos (never imported by the library): random and scripted
Qwen-VL models with the real classes (:mod:`recbole_reveal.testing.vlms`). Light: importing it loads
neither torch nor RecBole."""
