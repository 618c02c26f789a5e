# Entry point: a board runs main.py at boot; the Unix port: `micropython main.py`.
import asyncio

import firmware

asyncio.run(firmware.main())
