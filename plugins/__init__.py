"""The built-in plugins, one module per plugin, registered through entry points like any other."""
