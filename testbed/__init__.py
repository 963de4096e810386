"""What the tests and the benchmarks share, and neither owns: the tiny models built in seconds
(:mod:`testbed.tiny_models`) and the real processes they start — ``python -m app``,
``redis-server``, nginx (:mod:`testbed.processes`). ``tests/`` and ``bench/`` both import this
package and never each other. Not part of the installed package.
"""
