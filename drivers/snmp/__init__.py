"""SNMP devices: NTCIP 1202 traffic signal controllers on the cabinet LAN.

``profile.py`` reads the object maps (``drivers/profiles/ntcip-*.toml``), ``codec.py``
turns an SNMP answer into point values (pure, no I/O), ``device.py`` is the asyncio
side: one pysnmp GET per poll, SNMPv2c or v3 USM, behind the ``Device`` seam.
"""
