"""The gateway's own GPIO lines (board HAL) as a device."""
