"""The sweep tests' shared cluster: one `ray start` head and one 2-CPU worker node for every test of this folder that
needs a cluster, started once and stopped when the folder's last test is done (this folder is a package, so its
fixture's "package" scope ends there). A sweep by address skips the ~15 s an embedded Ray takes to start."""

from __future__ import annotations

import pytest

from .ray_helpers import ray_cluster


@pytest.fixture(scope="package")
def cluster():
    """A head that runs no trial and one 2-CPU worker node (`cluster.machine`)."""
    with ray_cluster(head_cpus=0, worker_cpus=(2,)) as c:
        yield c
