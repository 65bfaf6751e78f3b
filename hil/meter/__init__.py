"""Emulated DLMS/COSEM meters: physics (model), COSEM objects, the sans-IO DLMS server and its
UDP/TCP edges."""
