# Runs the firmware's unit tests in MicroPython: micropython tests/run.py (from
# board/iomodule, MICROPYPATH=.frozen:lib:.). Exit status 0 when every test passes.
import sys
import unittest

import test_firmware
import test_iolink

suite = unittest.TestSuite()
for module in (test_iolink, test_firmware):
    for name in dir(module):
        obj = getattr(module, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, unittest.TestCase)
            and obj is not unittest.TestCase
        ):
            suite.addTest(obj)
result = unittest.TestRunner().run(suite)
sys.exit(0 if result.failuresNum == 0 and result.errorsNum == 0 else 1)
