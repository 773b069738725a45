"""SAM2VideoX plumbing: corpus listing, decoding, configs, stores, orchestration (no model code)."""
