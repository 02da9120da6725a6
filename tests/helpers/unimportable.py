"""A worker class whose module cannot be imported in a Ray worker process, as when a worker found another segbatch first
(a segbatch/ folder where the user stands): the driver imports it, every worker fails to."""

import sys

if sys.argv and sys.argv[0].endswith("default_worker.py"):  # how Ray starts a Python worker
    raise ImportError("cannot import name '__version__' from 'segbatch' (unknown location)")


class Worker:
    def __init__(self, job):
        self.job = job

    def device_name(self):
        return "cpu"

    def process(self, unit):
        return unit
