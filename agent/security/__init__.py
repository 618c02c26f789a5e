"""Security: the gateway's keys, the COSE_Sign1 envelope, and (later) the trust store."""
