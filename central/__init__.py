"""The central post's side of the wire contract: reference receiver, command signing, keys.

Not part of the gateway: `armoire` (agent/) never imports this package.
"""
