"""Cryptography for kmscli: the only package that imports ``cryptography`` or ``argon2``."""
