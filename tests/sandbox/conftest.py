"""The ``box`` fixture: every guarantee is tested on each backend this machine can run.

A backend that cannot run here is skipped with the reason, never passed; scripts/setup
installs bubblewrap where it can, and .ci/run prints how many sandbox tests were skipped.
"""

from __future__ import annotations

import pytest

from apprentice.sandbox import Sandbox, SandboxLimits, SandboxUnavailableError

BACKENDS = ("bwrap", "namespaces")


@pytest.fixture(params=BACKENDS, scope="module")
def box(request) -> Sandbox:
    sandbox = Sandbox(SandboxLimits(cpu_s=1, wall_s=60), backend=request.param)
    try:
        assert sandbox.backend == request.param
    except SandboxUnavailableError as exc:
        pytest.skip(f"{request.param} cannot run here: {exc}")
    return sandbox
