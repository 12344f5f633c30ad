"""Software-defined assets, one folder per group."""
