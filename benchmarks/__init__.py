"""Hand-run measurements of speed and memory (never part of the test suite).

Each is a module run from the repository root, `python -m benchmarks.NAME`, so
it imports the installed package and the tests' generators (`tests.helpers`)
as any code in the repository does.
"""
