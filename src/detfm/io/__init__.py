"""The file format (PILArNet-M layout): read, write, validate — nothing else."""

from detfm.io import layout
from detfm.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text, file_sha256, follow_umask
from detfm.io.event import Event
from detfm.io.h5 import EventFile, EventWriter, content_hash, event_from_raw, read_events, write_events
from detfm.io.outputs import OutputError, check_output_dir, check_output_file
from detfm.io.validate import Violation, check_event, event_problems, validate_file

__all__ = [
    "Event", "EventFile", "EventWriter", "OutputError", "Violation", "atomic_path", "atomic_write_bytes",
    "atomic_write_text", "check_event", "check_output_dir", "check_output_file", "content_hash",
    "event_from_raw", "event_problems", "file_sha256", "follow_umask", "layout", "read_events",
    "validate_file", "write_events",
]
