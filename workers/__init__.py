"""foldermill's processing side: config, engine, queue, workers."""

__version__ = "0.1.0"
