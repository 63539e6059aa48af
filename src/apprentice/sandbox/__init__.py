"""Running untrusted Python (model-written code) in a box it cannot leave."""

from apprentice.sandbox.sandbox import (
    LIMITS,
    Sandbox,
    SandboxError,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailableError,
)

__all__ = [
    "LIMITS",
    "Sandbox",
    "SandboxError",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailableError",
]
