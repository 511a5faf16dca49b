"""The embedded store: segment log of events, content-addressed message packs, export.

See ``docs/store.md`` for the layout, the record formats and the guarantees.
"""

from .export import export_messages, export_raw, read_mbox
from .messages import CorruptRecord, Location, MessageStore, scan_pack
from .recorder import Recorder, RecorderError, RecorderStats
from .catalog import Reader, iter_event_lines, iter_events, iter_segment_files
from .segments import ReadStats, SegmentWriter, compress_segment, recover

__all__ = [
    "CorruptRecord", "Location", "MessageStore", "ReadStats", "Reader", "Recorder", "RecorderError",
    "RecorderStats", "SegmentWriter", "compress_segment", "export_messages", "export_raw",
    "iter_event_lines", "iter_events", "iter_segment_files", "read_mbox", "recover", "scan_pack",
]
