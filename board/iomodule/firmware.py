# Cabinet I/O module firmware (MicroPython; README "Cabinet I/O module").
#
# Reads the cabinet's dry contacts (door, mains, UPS on battery, surge arrester) and a
# temperature sensor, drives two relays, and answers the agent on a UART with iolink
# frames. Three things keep the cabinet safe without the agent:
# - relays fall to their configured safe state when no valid frame has come from the
#   agent for `safe_after_ms` (lighting relay energised: lamps fed);
# - the hardware watchdog is fed only while the input scan (which also runs the safe-state
#   timer) makes progress, so a hung firmware resets the board (booting with relays safe);
# - an input change is sent at once (CHANGE), not at the agent's next poll.
#
# `Module` is the logic, without I/O or clock (time is passed in, in ms); `main()` runs it
# on uasyncio with the board's (or unix_machine's) Pin, ADC, UART and WDT.
import iolink

# Input bits of STATUS, and relay bits; the agent's codec names the same bits.
INPUT_BITS = {"door": 0x01, "mains": 0x02, "ups": 0x04, "spd": 0x08}
RELAY_BITS = {"relay_lighting": 0x01, "relay_aux": 0x02}
FLAG_SAFE = 0x01
FLAG_WDT_RESET = 0x02

# Board wiring and behaviour. On a board, edit here; the Unix port reads a JSON file
# named by $IOMOD_CONFIG over these defaults.
DEFAULTS = {
    "uart": {"id": 1, "baudrate": 115200},
    # pin: the board's pin id; active_low: an optocoupler input pulls the pin low when the
    # contact is closed. "door" is active when open, "mains" when powered.
    "inputs": {
        "door": {"pin": 5, "active_low": True},
        "mains": {"pin": 6, "active_low": True},
        "ups": {"pin": 7, "active_low": True},
        "spd": {"pin": 8, "active_low": True},
    },
    "relays": {
        "relay_lighting": {"pin": 20, "safe": 1},  # lamps fed when the agent is gone
        "relay_aux": {"pin": 21, "safe": 0},
    },
    "temperature": {"adc": 26},  # LM35-class sensor: 10 mV/°C on a 3.3 V ADC
    "scan_ms": 10,  # input sampling period
    "debounce_ms": 30,  # a level must hold this long to count (contact bounce: < 20 ms)
    "safe_after_ms": 5000,  # agent silent this long: relays to their safe state
    "wdt_ms": 4000,  # hardware watchdog timeout
    "temp_every_ms": 1000,
}


class Debounced:
    """One input: a raw level must hold `debounce_ms` before it becomes the state."""

    def __init__(self, active_low, debounce_ms, level, now):
        self.active_low = active_low
        self.debounce_ms = debounce_ms
        self.state = bool(level) != bool(active_low)
        self._candidate = self.state
        self._since = now

    def sample(self, level, now, diff):
        """Feed one raw level; True when the debounced state changed."""
        value = bool(level) != bool(self.active_low)
        if value != self._candidate:
            self._candidate = value
            self._since = now
        if value != self.state and diff(now, self._since) >= self.debounce_ms:
            self.state = value
            return True
        return False


def _diff(a, b):
    return a - b


class Feeder:
    """Whether to feed the hardware watchdog: only if the scan loop (inputs, safe-state
    timer) moved since the last check. A hung loop or a blocked scheduler starves the
    watchdog and the board resets, booting with its relays safe."""

    def __init__(self, progress):
        self._seen = progress

    def due(self, progress):
        moved = progress != self._seen
        self._seen = progress
        return moved


class Module:
    """The firmware's logic. Methods take the time in ms and return frames to send."""

    def __init__(self, config, levels, now, watchdog_reset=False, diff=_diff):
        self.config = config
        self._diff = diff
        self.inputs = {}
        for name, spec in config["inputs"].items():
            self.inputs[name] = Debounced(
                spec["active_low"], config["debounce_ms"], levels.get(name, 1), now
            )
        # Boot with relays safe: after a reset nobody has told us otherwise.
        self.relays = {name: bool(spec["safe"]) for name, spec in config["relays"].items()}
        self.safe = True
        self.flags_extra = FLAG_WDT_RESET if watchdog_reset else 0
        self.temperature = None
        self.seq = 0
        self.last_heard = None  # ms of the last valid agent frame
        self.decoder = iolink.Decoder()
        self.naks = 0

    def _next_seq(self):
        seq = self.seq
        self.seq = (seq + 1) & 0xFF
        return seq

    def input_bits(self):
        bits = 0
        for name, inp in self.inputs.items():
            if inp.state:
                bits |= INPUT_BITS[name]
        return bits

    def relay_bits(self):
        bits = 0
        for name, on in self.relays.items():
            if on:
                bits |= RELAY_BITS[name]
        return bits

    def flags(self):
        return (FLAG_SAFE if self.safe else 0) | self.flags_extra

    def status(self, kind, ack):
        payload = iolink.status_payload(
            ack, self.input_bits(), self.relay_bits(), self.flags(), self.temperature
        )
        return iolink.encode(kind, self._next_seq(), payload)

    def scan(self, levels, now):
        """Sample every input; returns a CHANGE frame if a debounced state changed."""
        changed = False
        for name, inp in self.inputs.items():
            if inp.sample(levels.get(name, 1), now, self._diff):
                changed = True
        return [self.status(iolink.CHANGE, 0)] if changed else []

    def receive(self, data, now):
        """Bytes from the agent; returns the frames to answer with."""
        out = []
        for item in self.decoder.feed(data):
            if item[0] == "corrupt":
                self.naks += 1
                out.append(
                    iolink.encode(iolink.NAK, self._next_seq(), bytes((iolink.NAK_CORRUPT,)))
                )
                continue
            kind, seq, payload = item
            if kind == iolink.PING:
                self.last_heard = now
                out.append(self.status(iolink.STATUS, seq))
            elif kind == iolink.SET_RELAYS:
                if len(payload) < 2 or payload[0] & ~0x03 or payload[1] & ~payload[0]:
                    out.append(
                        iolink.encode(
                            iolink.NAK, self._next_seq(), bytes((iolink.NAK_BAD_PAYLOAD,))
                        )
                    )
                    continue
                self.last_heard = now
                mask, values = payload[0], payload[1]
                for name, bit in RELAY_BITS.items():
                    if mask & bit and name in self.relays:
                        self.relays[name] = bool(values & bit)
                self.safe = False  # the agent has taken the relays back
                out.append(self.status(iolink.STATUS, seq))
            else:
                out.append(
                    iolink.encode(iolink.NAK, self._next_seq(), bytes((iolink.NAK_UNKNOWN_TYPE,)))
                )
        return out

    def tick(self, now):
        """Safe state when the agent went silent; returns a CHANGE frame if it engaged."""
        if self.safe:
            return []
        silent = now if self.last_heard is None else self._diff(now, self.last_heard)
        if self.last_heard is None or silent >= self.config["safe_after_ms"]:
            self.engage_safe_state()
            return [self.status(iolink.CHANGE, 0)]
        return []

    def engage_safe_state(self):
        for name, spec in self.config["relays"].items():
            self.relays[name] = bool(spec["safe"])
        self.safe = True


def load_config():
    import json
    import os

    config = {}
    for key, value in DEFAULTS.items():
        config[key] = value
    path = os.getenv("IOMOD_CONFIG") if hasattr(os, "getenv") else None
    if path:
        with open(path) as f:
            for key, value in json.loads(f.read()).items():
                config[key] = value
    return config


async def main():
    import asyncio
    import time

    try:
        import machine

        Pin, ADC, UART, WDT = machine.Pin, machine.ADC, machine.UART, machine.WDT
        reset_cause, wdt_reset = machine.reset_cause, machine.WDT_RESET
    except (ImportError, AttributeError):  # the Unix port: machine has no Pin
        import unix_machine as machine

        Pin, ADC, UART, WDT = machine.Pin, machine.ADC, machine.UART, machine.WDT
        reset_cause, wdt_reset = machine.reset_cause, machine.WDT_RESET

    import logging

    log = logging.getLogger("iomodule")
    config = load_config()
    ticks, diff = time.ticks_ms, time.ticks_diff
    pins = {}
    for name, spec in config["inputs"].items():
        pins[name] = Pin(spec["pin"], Pin.IN, Pin.PULL_UP)
    outs = {}
    for name, spec in config["relays"].items():
        outs[name] = Pin(spec["pin"], Pin.OUT, value=spec["safe"])
    adc = ADC(config["temperature"]["adc"])
    uart = UART(config["uart"]["id"], baudrate=config["uart"]["baudrate"])
    wdt = WDT(timeout=config["wdt_ms"])

    def levels():
        return {name: pin.value() for name, pin in pins.items()}

    module = Module(config, levels(), ticks(), reset_cause() == wdt_reset, diff)
    writer = asyncio.StreamWriter(uart, {})
    reader = asyncio.StreamReader(uart)
    progress = [0]  # scan loop iterations
    applied = {}

    def apply_relays():
        for name, on in module.relays.items():
            if applied.get(name) != on:
                outs[name].value(1 if on else 0)
                applied[name] = on

    async def send(frames):
        apply_relays()  # the relays move before the agent hears they did
        for f in frames:
            writer.write(f)
        if frames:
            await writer.drain()

    def read_temperature():
        try:
            volts = adc.read_u16() * 3.3 / 65535
        except OSError:
            return None  # no sensor
        return round(volts * 100, 1)

    async def scan_loop():
        last_temp = None
        while True:
            now = ticks()
            if last_temp is None or diff(now, last_temp) >= config["temp_every_ms"]:
                module.temperature = read_temperature()
                last_temp = now
            await send(module.scan(levels(), now) + module.tick(now))
            progress[0] += 1
            await asyncio.sleep_ms(config["scan_ms"])

    async def link_loop():
        while True:
            try:
                data = await reader.read(64)
            except OSError:  # the other end of the line went away (pty closed)
                data = b""
            if data:
                await send(module.receive(data, ticks()))
            else:
                await asyncio.sleep_ms(50)

    async def watchdog_loop():
        feeder = Feeder(progress[0])
        while True:
            await asyncio.sleep_ms(config["wdt_ms"] // 4)
            if feeder.due(progress[0]):
                wdt.feed()

    log.info("iomodule up: safe state until the agent speaks")
    apply_relays()
    await asyncio.gather(scan_loop(), link_loop(), watchdog_loop())
