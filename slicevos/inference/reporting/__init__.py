"""What inference reports: ``report`` (the per-case JSON: organ volumes, timings, memory),
``preview`` and ``legend`` (overlay PNG mosaics), ``uncertainty`` (per-slice uncertainty
and the slices to check first)."""
