"""The vault file: its format and its store."""
