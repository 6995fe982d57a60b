"""The command-line adapter: parse, call one service method, render."""
