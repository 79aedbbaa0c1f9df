"""The optical-flow engine (needs no training): ``engine`` (FlowConfig, FlowPropagator and
its passes), ``field`` (flows between adjacent slices and their composition), ``shapes`` (what
is kept of a key: signed distances, intensity models)."""
