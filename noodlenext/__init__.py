"""noodlenext: fine-tune, explain and chat about noodle image classifiers."""

__version__ = "0.1.0"
