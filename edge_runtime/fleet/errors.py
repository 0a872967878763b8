"""Fleet errors: each message is the one-line reason a device reports or the CLI prints."""

from __future__ import annotations

from ..errors import EdgeRuntimeError


class FleetError(EdgeRuntimeError):
    """Base class for fleet update failures."""


class ReleaseError(FleetError):
    """A release record or desired state is malformed, unsigned, expired, not newer, or for another group."""


class ChunkError(FleetError):
    """A chunk could not be fetched or stored (bad hash too often, no answer, disk full)."""


class SelfTestError(FleetError):
    """A staged bundle failed its golden examples or latency budget."""


class ProbationError(FleetError):
    """The new model did worse than the previous one during probation."""


class Halted(FleetError):
    """The fleet manager halted the rollout while this device was downloading."""
