"""A local emulator of fal.ai's queue API (and Platform API request listing) for Imagen 4."""

from imagen4ctl.emulator.faults import Fault, FaultPlan, FaultSpecError, parse_faults
from imagen4ctl.emulator.images import IMAGEN4_SIZES, image_size
from imagen4ctl.emulator.log import LogEntry, RequestLog, fingerprint
from imagen4ctl.emulator.server import FalEmulator

__all__ = [
    "IMAGEN4_SIZES",
    "FalEmulator",
    "Fault",
    "FaultPlan",
    "FaultSpecError",
    "LogEntry",
    "RequestLog",
    "fingerprint",
    "image_size",
    "parse_faults",
]
