"""The bottom layer: what every other layer may use (config location and resolvers, atomic files,
devices, the model hub's reachability, lazy re-exports). It imports no other noodlenext layer."""
