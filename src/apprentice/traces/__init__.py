"""Teacher traces: capture predictor calls, store them crash-safely, bootstrap at scale."""

from apprentice.traces.bootstrap import BootstrapResult, bootstrap_traces, passes
from apprentice.traces.capture import Step, Trace, capture, example_id, run_traced
from apprentice.traces.store import StoreManifest, TraceStore, TraceStoreMismatch

__all__ = [
    "BootstrapResult",
    "Step",
    "StoreManifest",
    "Trace",
    "TraceStore",
    "TraceStoreMismatch",
    "bootstrap_traces",
    "capture",
    "example_id",
    "passes",
    "run_traced",
]
