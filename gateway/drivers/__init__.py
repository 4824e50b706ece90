"""Device drivers: the Driver interface, its registry, and the built-in drivers."""
