"""Board files: built-in boards, device path resolution and claim cross-checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.board import BoardError, GpioLine, SerialPort, builtin_boards, load_board

SIM_SERIAL = '[serial.rs485_1]\ndevice = "dev/rs485_1"\nbaudrate = 19200\nparity = "E"\n'


def write_board(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "b.toml"
    path.write_text(f'[board]\nname = "b"\n{body}', encoding="utf-8")
    return path


def test_builtin_boards__sim_and_real() -> None:
    """Both shipped boards are listed and load without error."""
    assert builtin_boards() == ["armoire-gw1", "sim"]
    for name in builtin_boards():
        assert load_board(name).name == name


def test_builtin_boards__sim_has_the_real_boards_roles() -> None:
    """Agent code written against the simulated board finds every role on the real one."""
    sim, real = load_board("sim"), load_board("armoire-gw1")
    assert list(real.serial) == ["rs485_1", "console"]
    # The simulated cabinet also has the I/O module, on a serial line of its own (a cabinet
    # option for gateways without spare GPIO; README, "Cabinet I/O").
    assert list(sim.serial) == ["rs485_1", "iomodule", "console"]
    assert list(sim.gpio) == list(real.gpio)
    assert {"door_contact", "mains_sense", "relay_lighting"} <= set(real.gpio)
    assert sim.console == real.console == "console"
    assert sim.watchdog is not None
    assert real.watchdog == Path("/dev/watchdog")
    for role, port in real.serial.items():
        sim_port = sim.serial[role]
        # Parity is the one deliberate difference: ptys cannot carry it (see board/sim.toml).
        assert (sim_port.baudrate, sim_port.rs485) == (port.baudrate, port.rs485)
    for role, line in real.gpio.items():
        assert (sim.gpio[role].direction, sim.gpio[role].active_low) == (
            line.direction,
            line.active_low,
        )


def test_load_board__real_board_contents() -> None:
    """The real gateway's RS-485 port, door contact and watchdog are where the hardware has them."""
    board = load_board("armoire-gw1")
    assert board.serial["rs485_1"] == SerialPort(
        role="rs485_1",
        device=Path("/dev/ttymxc1"),
        baudrate=19200,
        parity="E",
        bytesize=8,
        stopbits=1,
        rs485=True,
    )
    assert board.serial["console"].device == Path("/dev/ttymxc0")
    assert board.gpio["door_contact"] == GpioLine(
        role="door_contact", chip="gpiochip0", line=5, direction="input", active_low=True
    )
    assert board.watchdog_timeout == 30
    assert board.source.name == "armoire-gw1.toml"


def test_load_board__relative_devices_resolve_against_base_dir(tmp_path: Path) -> None:
    """The simulator's ptys are found under the data directory it passes."""
    board = load_board("sim", base_dir=tmp_path)
    assert board.serial["rs485_1"].device == tmp_path / "dev" / "rs485_1"
    assert board.serial["console"].device == tmp_path / "dev" / "console"
    assert board.watchdog == tmp_path / "dev" / "watchdog"
    assert board.gpio["door_contact"].chip == "sim"


def test_load_board__absolute_devices_ignore_base_dir(tmp_path: Path) -> None:
    """A real board's /dev paths stay what they are whatever base_dir says."""
    board = load_board("armoire-gw1", base_dir=tmp_path)
    assert board.serial["rs485_1"].device == Path("/dev/ttymxc1")


def test_load_board__relative_devices_stay_relative_without_base_dir() -> None:
    """Without base_dir a relative device path is left as written (cwd-relative)."""
    assert load_board("sim").serial["rs485_1"].device == Path("dev/rs485_1")


def test_load_board__by_path_with_defaults(tmp_path: Path) -> None:
    """A board file given by path loads; omitted serial settings are 8N1 without RS-485."""
    path = write_board(tmp_path, '[serial.console]\ndevice = "/dev/ttyS0"\nbaudrate = 115200\n')
    board = load_board(path)
    assert board.serial["console"] == SerialPort(
        role="console",
        device=Path("/dev/ttyS0"),
        baudrate=115200,
        parity="N",
        bytesize=8,
        stopbits=1,
        rs485=False,
    )
    assert (board.watchdog, board.watchdog_timeout, board.console) == (None, None, None)
    assert board.gpio == {}
    assert board.source == path


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(
            SIM_SERIAL + '[serial.rs485_2]\ndevice = "dev/rs485_1"\nbaudrate = 9600\n',
            'serial.rs485_2.device: "dev/rs485_1" is already claimed by serial.rs485_1',
            id="serial-device-twice",
        ),
        pytest.param(
            SIM_SERIAL + '[watchdog]\ndevice = "dev/rs485_1"\ntimeout = 10\n',
            'watchdog.device: "dev/rs485_1" is already claimed by serial.rs485_1',
            id="watchdog-on-a-serial-device",
        ),
        pytest.param(
            '[gpio.door]\nchip = "gpiochip0"\nline = 5\ndirection = "input"\n'
            '[gpio.relay]\nchip = "gpiochip0"\nline = 5\ndirection = "output"\n',
            "gpio.relay.line: gpiochip0 line 5 is already claimed by gpio.door",
            id="gpio-line-twice",
        ),
        pytest.param(
            SIM_SERIAL + '[console]\nserial = "rs485"\n',
            'console.serial: no serial role "rs485" on this board; did you mean "rs485_1"?',
            id="console-unknown-role",
        ),
        pytest.param(
            SIM_SERIAL.replace("19200", "19201"),
            'serial.rs485_1.baudrate: 19201 is not a standard rate; did you mean "19200"?',
            id="odd-baudrate",
        ),
        pytest.param(
            SIM_SERIAL.replace('"E"', '"even"'),
            'serial.rs485_1.parity: expected one of "N", "E", "O", got "even"',
            id="bad-parity",
        ),
        pytest.param(
            SIM_SERIAL + "rs_485 = true\n",
            'serial.rs485_1.rs_485: unknown key; did you mean "rs485"?',
            id="unknown-key",
        ),
        pytest.param(
            SIM_SERIAL.replace("rs485_1]", "RS485]"),
            'serial.RS485: expected a role name: 1 to 32 of a-z, 0-9, "_"',
            id="bad-role-name",
        ),
        pytest.param(
            '[gpio.door]\nchip = "gpiochip0"\nline = 5\ndirection = "inputs"\n',
            'gpio.door.direction: expected one of "input", "output", got "inputs"; '
            'did you mean "input"?',
            id="bad-direction",
        ),
        pytest.param(
            '[watchdog]\ndevice = "/dev/watchdog"\n',
            "watchdog.timeout: missing required key; expected a number 1..3600",
            id="watchdog-without-timeout",
        ),
        pytest.param(
            '[gpio.door]\nchip = "gpiochip0"\nline = 5\ndirection = "input"\nactive_low = 1\n',
            "gpio.door.active_low: expected true or false, got 1",
            id="int-is-not-a-bool",
        ),
    ],
)
def test_load_board__errors_name_the_key_path(tmp_path: Path, body: str, error: str) -> None:
    """A broken board file says which key is wrong and why, instead of failing at first use."""
    path = write_board(tmp_path, body)
    with pytest.raises(BoardError) as info:
        load_board(path)
    assert info.value.errors == [f"{path}: {error}"]


def test_load_board__unknown_builtin_suggests() -> None:
    """A typo in a board name gets the right one suggested."""
    with pytest.raises(BoardError) as info:
        load_board("armoire-gw")
    assert info.value.errors == [
        'no built-in board "armoire-gw"; did you mean "armoire-gw1"? '
        "(built-in: armoire-gw1, sim; or give a path to a .toml file)"
    ]


def test_load_board__missing_board_table(tmp_path: Path) -> None:
    """A file without its [board] header is refused with the key to add."""
    path = tmp_path / "b.toml"
    path.write_text(SIM_SERIAL, encoding="utf-8")
    with pytest.raises(BoardError) as info:
        load_board(path)
    assert info.value.errors == [f"{path}: board: missing required key; expected a table"]
