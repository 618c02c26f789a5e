# A thin `machine` for the MicroPython Unix port, so the firmware runs unchanged on a PC
# (tests, the simulator). The Unix port's own `machine` has no Pin, UART, ADC or WDT.
#
# The "hardware" is a folder named by $IOMOD_HW:
#   inputs.json   electrical levels of the input pins and ADC readings, written by the
#                 test or the simulator (atomically: write a temp file, rename):
#                 {"door": 0, "mains": 0, "ups": 1, "spd": 1, "temp": 4270}
#   outputs.json  written here on every change: output pin levels and watchdog feeds,
#                 {"pins": {"relay_lighting": 1, ...}, "wdt_feeds": 12}
# The UART is the pty path given as its id.
import io
import json
import os
import select
import time

_DIR = os.getenv("IOMOD_HW") or "."
_outputs = {}
_feeds = [0]
_cache = [None, None]  # (ticks_ms, parsed inputs): one file read per millisecond at most


def _inputs():
    now = time.ticks_ms()
    if _cache[0] != now:
        try:
            with open(_DIR + "/inputs.json") as f:
                _cache[1] = json.loads(f.read())
        except (OSError, ValueError):
            pass  # mid-rename or absent: keep the last levels
        _cache[0] = now
    return _cache[1] or {}


def _publish():
    tmp = _DIR + "/outputs.json.tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps({"pins": _outputs, "wdt_feeds": _feeds[0]}))
    os.rename(tmp, _DIR + "/outputs.json")


class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 1

    def __init__(self, id, mode=IN, pull=None, value=None):
        self._id = id
        self._mode = mode
        if mode == Pin.OUT:
            _outputs[id] = 0 if value is None else int(value)
            _publish()

    def value(self, v=None):
        if v is None:
            if self._mode == Pin.OUT:
                return _outputs[self._id]
            return int(_inputs().get(self._id, 1))  # pulled up, like the board's inputs
        _outputs[self._id] = 1 if v else 0
        _publish()
        return None


class ADC:
    def __init__(self, id):
        self._id = id

    def read_u16(self):
        value = _inputs().get(self._id)
        if value is None:
            raise OSError(19)  # ENODEV: no sensor
        return int(value)


class WDT:
    """Counts feeds in outputs.json; a PC cannot be reset, the tests watch the count."""

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        _publish()

    def feed(self):
        _feeds[0] += 1
        _publish()


def reset_cause():
    return 0  # the Unix port never comes out of a watchdog reset


WDT_RESET = 3


class UART(io.IOBase):
    """The pty as a UART: read() returns what is there (never waits), like a board's UART
    with timeout=0, and asyncio can poll it (MicroPython user streams: ioctl)."""

    def __init__(self, id, baudrate=115200, **kwargs):
        self._f = open(id, "r+b")
        self._poll = select.poll()
        self._poll.register(self._f, select.POLLIN)

    def any(self):
        return 1 if self._poll.poll(0) else 0

    def readinto(self, buf):
        # FileIO.read(n) on a blocking tty waits for n bytes: take one at a time.
        n = 0
        mv = memoryview(buf)
        while n < len(buf) and self._poll.poll(0):
            if not self._f.readinto(mv[n : n + 1]):
                break
            n += 1
        return n or None

    def read(self, n=64):
        buf = bytearray(n)
        got = self.readinto(buf)
        return None if got is None else bytes(buf[:got])

    def write(self, data):
        return self._f.write(data)

    def ioctl(self, req, arg):
        if req == 10:  # MP_STREAM_GET_FILENO: select.poll then waits on the fd itself
            return self._f.fileno()  # (without it, the Unix port polls this object in a busy loop)
        if req == 3:  # MP_STREAM_POLL
            ready = 0
            if arg & select.POLLIN and self._poll.poll(0):
                ready |= select.POLLIN
            if arg & select.POLLOUT:
                ready |= select.POLLOUT
            return ready
        return 0
