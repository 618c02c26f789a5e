"""ONVIF cameras (Profile S/T device, media and event services) over HTTP.

``digest`` and ``http`` (RFC 7616 and an HTTP/1.1 response parser) and ``soap`` (the
few SOAP operations we use, parsed with defusedxml) are sans-IO; ``client`` is the
only module that awaits; ``camera`` is the :class:`drivers.device.Device`.
"""
