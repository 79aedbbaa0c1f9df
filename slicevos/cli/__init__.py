"""Command-line tools: one ``main(argv=None) -> int`` per module; ``tools/*.py`` call them.
Nothing in the package imports from here."""
