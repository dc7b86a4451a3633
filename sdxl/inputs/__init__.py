"""The request boundary: what a request is, how each API spells it, and the rules that say
whether it is valid."""
