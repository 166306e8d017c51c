"""The command line: the only code that prints, reads the terminal or exits."""
