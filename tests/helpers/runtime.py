"""The tests' local Ray runtime: the session's (`conftest.ray_address`) and the store-bits recorder's, one definition so the
recorded bits come from the runtime the tests compare them under."""

from __future__ import annotations


def start_test_ray() -> str:
    """Start a local Ray runtime of 2 CPUs, as on a 2-core box, and return its address.

    2 CPUs whatever the machine: a run's default is then 2 actors and 1-2
    stitch tasks everywhere (4 logical CPUs started 4 actors, each 3 s of CPU,
    mostly importing torch: a fifth of the slow tests' CPU). Its own runtime,
    never a cluster that a `ray start` on the machine recorded (what ray.init
    would join without an address).
    """
    import logging

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    return str(ray.get_runtime_context().gcs_address)
