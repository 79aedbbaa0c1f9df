"""The STCN memory-network engine: ``engine`` (Propagator, its passes, checkpoint loading),
``memory_bank`` (keys and values of the frames in memory), ``object_modes`` (per-object or
joint masks), ``slice_scale`` (small slices on a finer network grid)."""
