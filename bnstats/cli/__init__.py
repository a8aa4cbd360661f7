"""The command line: a thin click layer over the library.

``main`` is the command group, ``options`` the options shared by several commands (each declared once),
``progress`` what the user sees on stderr, and ``commands`` one module per command."""
