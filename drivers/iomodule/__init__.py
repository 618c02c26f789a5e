"""The cabinet I/O module (MicroPython, board/iomodule/) on a serial line."""
