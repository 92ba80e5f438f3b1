"""The file format (PILArNet-M layout): read, write, validate — nothing else."""

from detfm.io import layout
from detfm.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text, file_sha256
from detfm.io.event import Event
from detfm.io.h5 import EventFile, EventWriter, content_hash, event_from_raw, read_events, write_events
from detfm.io.validate import Violation, validate_file

__all__ = [
    "Event", "EventFile", "EventWriter", "Violation", "atomic_path", "atomic_write_bytes",
    "atomic_write_text", "content_hash", "file_sha256", "event_from_raw", "layout", "read_events",
    "validate_file", "write_events",
]
