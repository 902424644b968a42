"""A pytest plugin and conformance suites for plugin authors."""
