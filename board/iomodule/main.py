# Entry point: a board runs main.py at boot; the Unix port: `micropython main.py`.
import asyncio
import logging

import firmware

logging.basicConfig(level=logging.INFO)
asyncio.run(firmware.main())
