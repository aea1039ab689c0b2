"""Supervision: supervisors, child specs and restart strategies, after Erlang/OTP.

Sits above the kernel and uses only what it exports: an exit listener on each child's
cell, and the cell's ``suspend``/``restart``/``stop``/``end`` transitions.
"""
