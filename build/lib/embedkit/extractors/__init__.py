"""Model plugins, one module each; see `extractors.base` for the contract."""
